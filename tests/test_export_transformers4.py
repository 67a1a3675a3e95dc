"""The exported config.json also loads in transformers 4 (what the official CoMeT code runs
on), with the right RoPE: only where a transformers 4 install is named, since the project's
environment has transformers 5. To run it:

    pip install --target /tmp/tf4 --no-deps "transformers==4.57.1" "tokenizers==0.22.1" "huggingface_hub==0.36.0"
    COMET_JAX_TRANSFORMERS4=/tmp/tf4 python -m pytest -q tests/test_export_transformers4.py
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hf_models
from comet_jax.convert.hf_import import convert
from comet_jax.export.write import export

TF4 = os.environ.get("COMET_JAX_TRANSFORMERS4")
pytestmark = pytest.mark.skipif(not TF4, reason="set COMET_JAX_TRANSFORMERS4 to a transformers 4 install")
quiet = dict(log=lambda m: None)

LOAD = """
import json, sys, numpy as np, torch, transformers
assert transformers.__version__.startswith("4."), transformers.__version__
out = {"version": transformers.__version__}
for name, path in json.loads(sys.argv[1]).items():
    cfg = transformers.AutoConfig.from_pretrained(path)
    out[name] = {"rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling, "pad": cfg.pad_token_id,
                 "eos": cfg.eos_token_id}
    if name != "official":  # MemQwen3ForCausalLM is the official code's, not transformers'
        model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                                  torch_dtype=torch.float32)
        tokens = torch.tensor(np.load(sys.argv[2]))
        with torch.no_grad():
            out[name]["logits"] = model(tokens[:, :]).logits[..., :100].numpy().tolist()
print(json.dumps(out))
"""


def test_transformers_4_loads_the_exports(tmp_path):
    llama = hf_models.build(hf_models.llama_config())
    qwen = hf_models.build(hf_models.qwen3_config())
    dirs = {}
    for name, hf, opts in (("llama", llama, dict(global_size=0, stride=-1)),
                           ("qwen3", qwen, dict(global_size=0, stride=-1)),
                           ("native", llama, dict(chunk_size=16, global_size=2, stride=4, budget=8)),
                           ("official", qwen, dict(chunk_size=16, global_size=2, stride=4, budget=8))):
        src = tmp_path / f"{name}_src"
        hf_models.save(hf, src)
        convert(src, tmp_path / f"{name}_ckpt", **opts, **quiet)
        dirs[name] = str(tmp_path / name)
        export(tmp_path / f"{name}_ckpt", dirs[name], **quiet)
    tokens = np.random.default_rng(0).integers(0, 100, (1, 11))
    np.save(tmp_path / "tokens.npy", tokens)
    env = {**os.environ, "PYTHONPATH": TF4}
    proc = subprocess.run([sys.executable, "-c", LOAD, json.dumps(dirs), str(tmp_path / "tokens.npy")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["qwen3"]["rope_theta"] == got["official"]["rope_theta"] == 1e6  # not transformers 4's default
    assert got["llama"]["rope_scaling"]["rope_type"] == "llama3" and got["llama"]["pad"] == got["llama"]["eos"] == 2
    for name, hf in (("llama", llama), ("qwen3", qwen), ("native", llama)):
        np.testing.assert_allclose(np.array(got[name]["logits"]), hf_models.hf_logits(hf, tokens)[..., :100],
                                   rtol=1e-5, atol=1e-5, err_msg=name)
