"""Quantization quality on a wider text set than the quantize gate's: the 24 dev prompts, each
followed by its 48-token fp32 greedy continuation (~940 tokens), scored by fp32 and each bundle with
the gate's own measure (`ortrefine.export.quality.measure`: perplexity, mean KL(fp32 ‖ q), top-1).

    python benchmarks/probes/quant_quality.py models/smollm2-135m-int4 models/smollm2-135m-int4-head8 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ortrefine
from ortrefine.export.quality import GateConfig, measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEV_PROMPTS  # noqa: E402


def main() -> None:
    fp = ortrefine.load("models/smollm2-135m", provider="cpu")
    texts = []
    for line in DEV_PROMPTS.read_text().splitlines():
        if line.strip():
            prompt = json.loads(line)["prompt"]
            texts.append(prompt + fp.generate(prompt, max_new_tokens=48).text)
    cfg = GateConfig(texts=tuple(texts))
    for b in sys.argv[1:]:
        rep = measure(fp, ortrefine.load(b, provider="cpu"), cfg)
        print(f"{b}: tokens {rep.tokens}, ppl {rep.parent_ppl:.2f} -> {rep.quantized_ppl:.2f}, "
              f"KL {rep.mean_kl:.4f}, top-1 {rep.top1_agreement:.3f}")


if __name__ == "__main__":
    main()
