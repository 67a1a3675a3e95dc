"""ModelConfig from HF config.json in both transformers spellings; clear refusals."""

import numpy as np
import pytest

import hf_models
from comet_jax.config import (CometConfig, ConfigError, RopeConfig, comet_config_from_dict,
                              model_config_from_dict, model_config_from_hf, to_dict)
from comet_jax.model.rope import inv_frequencies

BASE = {"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}


def test_transformers4_and_5_spellings_agree():
    v4 = {**BASE, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                           "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 8192}}
    v5 = {**BASE, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}}
    a, b = model_config_from_hf(v4), model_config_from_hf(v5)
    assert a == b and a.rope.type == "llama3" and a.rope.theta == 500000.0 and a.head_dim == 8
    old_linear = model_config_from_hf({**BASE, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert old_linear.rope == RopeConfig(theta=10000.0, type="linear", factor=2.0)
    assert model_config_from_hf(BASE).rope == RopeConfig()


def test_qwen3_flags():
    cfg = hf_models.qwen3_config().to_dict()
    mc = model_config_from_hf(cfg)
    assert mc.qk_norm and mc.tie_embeddings and mc.head_dim * mc.num_heads != mc.hidden_size


@pytest.mark.parametrize("rope", ["default", "linear", "llama3"])
def test_rope_frequencies_match_transformers(rope):
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": rope, "rope_theta": 10000.0}
    if rope != "default":
        params["factor"] = 4.0
    if rope == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    hf_cfg = hf_models.llama_config(rope_parameters=params, head_dim=32, hidden_size=128)
    if rope == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        ref = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg)[0]
    else:
        ref = ROPE_INIT_FUNCTIONS[rope](hf_cfg, torch.device("cpu"))[0]
    ours = inv_frequencies(model_config_from_hf(hf_cfg.to_dict()).rope, 32)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("patch, message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "'yarn' is not supported"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "'dynamic' is not supported"),
    ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"num_attention_heads": 3}, "num_kv_heads"),
])
def test_refusals_name_the_problem(patch, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_hf({**BASE, **patch})


def test_missing_key_is_named():
    cfg = dict(BASE)
    del cfg["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        model_config_from_hf(cfg)


def test_roundtrip_and_validation():
    mc = model_config_from_hf(BASE)
    assert model_config_from_dict(to_dict(mc)) == mc
    cc = CometConfig(chunk_size=8, global_size=2, stride=4, budget=4, placeholder_id=100, temp_beacon_id=101,
                     global_beacon_ids=(102, 103))
    assert comet_config_from_dict(to_dict(cc)) == cc
    cc.validate(vocab_size=104)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        cc.validate(vocab_size=103)
    with pytest.raises(ConfigError, match="unknown key comet.chunk"):
        comet_config_from_dict({"chunk": 3})
    with pytest.raises(ConfigError, match="global_beacon_ids has 1"):
        CometConfig(global_size=2, global_beacon_ids=(5,)).validate()
    with pytest.raises(ConfigError, match="comet.stride"):
        CometConfig(stride=0).validate()
