"""Export to HF and convert back is the identity; transformers loads the export."""

import jax
import numpy as np
import torch
import transformers

from comet_jax import checkpoint
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.convert.hf_import import convert
from comet_jax.demo import quickstart
from comet_jax.export.write import export_hf
from comet_jax.model import backbone
from comet_jax.model.init import init_params


def test_plain_export_loads_in_transformers_and_round_trips(tmp_path):
    model = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, qk_norm=True, tie_embeddings=True, family="qwen3")
    params = init_params(model, CometConfig(), jax.random.key(0))
    export_hf(params, model, CometConfig(), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager",
                                                           dtype=torch.float32)
    tokens = np.random.default_rng(0).integers(0, 256, (1, 19))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    ours = backbone.full_logits(params, tokens, np.array([19]), model)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)
    convert(tmp_path / "hf", tmp_path / "back", global_size=0, stride=-1, log=lambda m: None)
    back, _, _, _ = checkpoint.load(tmp_path / "back")
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))


def test_official_layout_round_trip(tmp_path):
    model = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, qk_norm=True, family="qwen3")
    comet = CometConfig(chunk_size=8, global_size=2, stride=4, budget=4, placeholder_id=250, temp_beacon_id=251,
                        global_beacon_ids=(252, 253))
    params = init_params(model, comet, jax.random.key(1))
    export_hf(params, model, comet, tmp_path / "official")
    convert(tmp_path / "official", tmp_path / "back", log=lambda m: None)
    back, m2, c2, _ = checkpoint.load(tmp_path / "back")
    assert c2 == comet and m2.num_real_tokens == 256
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))


def test_quickstart_runs(tmp_path, capsys):
    assert quickstart.main(["--out", str(tmp_path / "qs")]) == 0
    assert "quickstart done" in capsys.readouterr().out
