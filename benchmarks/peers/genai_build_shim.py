"""Run onnxruntime-genai 0.18's model builder with one shim: under transformers 5, Gemma-3's
config.rope_parameters is a per-layer-type dict, which base.Model.make_rope_init indexes as flat
(KeyError 'rope_type'); the Gemma-3 builder takes its thetas from rope_theta / rope_local_base_freq.

    /tmp/genai-venv/bin/python benchmarks/peers/genai_build_shim.py -i /tmp/gemma-hf -o /tmp/genai/gemma3-fp32 -p fp32 -e cpu

(the same arguments as `python -m onnxruntime_genai.models.builder`; /tmp/gemma-hf is
`save_pretrained` of `load_source(resolve_source("gemma3-270m"))`).
"""
import runpy, sys
import os, onnxruntime_genai.models as _m
sys.path.insert(0, os.path.dirname(_m.__file__))
import builders.base as base
orig = base.Model.make_rope_init
def make_rope_init(self, config):
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_type" not in rp:
        # the Gemma-3 builder reads the transformers-4 names of the two thetas
        config.rope_local_base_freq = rp["sliding_attention"]["rope_theta"]
        config.rope_theta = rp["full_attention"]["rope_theta"]
        return None
    return orig(self, config)
base.Model.make_rope_init = make_rope_init
sys.argv = ["builder"] + sys.argv[1:]
runpy.run_path(os.path.join(os.path.dirname(_m.__file__), "builder.py"), run_name="__main__")
