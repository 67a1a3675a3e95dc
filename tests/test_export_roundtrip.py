"""`comet_jax.export` round trips: HF -> convert -> export gives the source model back
(exact logits in transformers), official -> convert -> export -> convert is bit-exact, a
native export converts back with its memory nets; the config.json fields other tools need."""

import json

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import hf_models
from comet_jax import checkpoint
from comet_jax.convert.hf_import import convert
from comet_jax.export.write import export
from comet_jax.model import backbone

quiet = dict(log=lambda m: None)


def add_tokenizer(directory, size):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))


def flat_params(directory):
    return {k: np.asarray(v) for k, v in checkpoint.flatten(checkpoint.load_params(directory)).items()}


def read_tensors(directory):
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_plain_export_is_the_source_model(family, tmp_path):
    if family == "llama":  # llama3 RoPE, untied head, GQA
        hf = hf_models.build(hf_models.llama_config(bos_token_id=1, eos_token_id=2))
    else:  # q/k norm, tied embeddings, RoPE theta 1e6
        hf = hf_models.build(hf_models.qwen3_config())
    src = hf_models.save(hf, tmp_path / "src")
    add_tokenizer(src, 90)
    vocab = hf.config.vocab_size
    convert(src, tmp_path / "ckpt", global_size=0, stride=-1, **quiet)
    summary = export(tmp_path / "ckpt", tmp_path / "hf", shard_size="20KB", **quiet)
    assert summary["layout"] == "plain" and summary["shards"] >= 2 and summary["vocab_size"] == vocab

    out = tmp_path / "hf"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in read_tensors(out).values())
    # the padded vocabulary (256 rows) is cut back to the real rows: the very same tensors
    source = {k: v.numpy() for k, v in hf.state_dict().items()}
    exported = read_tensors(out)
    assert exported.keys() == {k for k in source if not (hf.config.tie_word_embeddings and k == "lm_head.weight")}
    for name, value in exported.items():
        np.testing.assert_array_equal(value, source[name], err_msg=name)

    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    tokens = np.random.default_rng(0).integers(0, vocab, (2, 17))
    # same weights, same config: transformers computes exactly the source's logits
    np.testing.assert_array_equal(hf_models.hf_logits(back, tokens), hf_models.hf_logits(hf, tokens))

    cfg = json.loads((out / "config.json").read_text())
    theta = hf.config.rope_parameters["rope_theta"]
    assert cfg["rope_theta"] == theta and cfg["rope_parameters"]["rope_theta"] == theta
    assert cfg["max_position_embeddings"] == hf.config.max_position_embeddings
    assert cfg["torch_dtype"] == cfg["dtype"] == "float32" and cfg["attention_bias"] is False
    if family == "llama":
        assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_scaling"]["factor"] == 8.0
        assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)  # pad: the eos id
    else:
        assert cfg["rope_scaling"] is None and cfg["pad_token_id"] == 0 and cfg["layer_types"]
    assert (out / "generation_config.json").is_file()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("w3 w7")["input_ids"] == [3, 7]


def test_bfloat16_export(tmp_path):
    hf = hf_models.build(hf_models.qwen3_config(num_hidden_layers=1))
    convert(hf_models.save(hf, tmp_path / "src"), tmp_path / "ckpt", global_size=0, stride=-1, **quiet)
    export(tmp_path / "ckpt", tmp_path / "hf", dtype="bfloat16", **quiet)
    got = read_tensors(tmp_path / "hf")
    want = hf.state_dict()["model.layers.0.mlp.down_proj.weight"].numpy().astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got["model.layers.0.mlp.down_proj.weight"], want)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def write_official(directory, rng):
    """An official CoMeT checkpoint (docs/design.md §1.8) written by hand: torch names with
    the `inner_layer.` infix, (out, in) weights, g_proj (1, 2D); vocabulary 64 (not a
    multiple of 256, so the converter pads it), untied head."""
    d, inter, layers, hd = 32, 40, 2, 8
    t = {"model.embed_tokens.weight": (64, d), "model.norm.weight": (d,), "lm_head.weight": (64, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "inner_layer.input_layernorm.weight": (d,), p + "inner_layer.post_attention_layernorm.weight": (d,),
                  p + "inner_layer.self_attn.q_proj.weight": (4 * hd, d), p + "inner_layer.self_attn.k_proj.weight": (2 * hd, d),
                  p + "inner_layer.self_attn.v_proj.weight": (2 * hd, d), p + "inner_layer.self_attn.o_proj.weight": (d, 4 * hd),
                  p + "inner_layer.self_attn.q_norm.weight": (hd,), p + "inner_layer.self_attn.k_norm.weight": (hd,),
                  p + "inner_layer.mlp.gate_proj.weight": (inter, d), p + "inner_layer.mlp.up_proj.weight": (inter, d),
                  p + "inner_layer.mlp.down_proj.weight": (d, inter),
                  p + "global_memory_net.norm.weight": (d,), p + "global_memory_net.g_proj.weight": (1, 2 * d),
                  p + "global_memory_net.o_proj.down_proj.weight": (8, d),
                  p + "global_memory_net.o_proj.up_proj.weight": (d, 8), p + "temp_memory_net.0.weight": (d,),
                  p + "temp_memory_net.1.down_proj.weight": (8, d), p + "temp_memory_net.1.up_proj.weight": (d, 8)})
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["MemQwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": d,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": hd, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 1000000.0,
        "max_position_embeddings": 40960, "bos_token_id": 60, "eos_token_id": 61, "torch_dtype": "float32",
        "chunk_size": 6, "placeholder_id": 50, "temp_beacon_id": 51, "temp_beacon_stride": 3,
        "temp_mem_budget": 4, "global_beacon_ids": [52, 53]}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 61, "do_sample": False}))
    add_tokenizer(directory, 64)
    return tensors


def test_official_round_trip_is_bit_exact(tmp_path):
    source = write_official(tmp_path / "official", np.random.default_rng(3))
    convert(tmp_path / "official", tmp_path / "ckpt", **quiet)
    summary = export(tmp_path / "ckpt", tmp_path / "hf", **quiet)
    assert summary["layout"] == "official"  # the default for a Qwen3 with memory
    out = tmp_path / "hf"
    exported = read_tensors(out)  # the official tensors come back as they were
    assert exported.keys() == source.keys()
    for name, value in source.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["MemQwen3ForCausalLM"] and cfg["global_beacon_ids"] == [52, 53]
    assert (cfg["temp_beacon_stride"], cfg["temp_mem_budget"], cfg["chunk_size"]) == (3, 4, 6)
    assert (cfg["pad_token_id"], cfg["max_position_embeddings"], cfg["rope_theta"]) == (61, 40960, 1e6)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 61
    assert (out / "tokenizer.json").is_file()

    convert(out, tmp_path / "again", **quiet)
    first, second = flat_params(tmp_path / "ckpt"), flat_params(tmp_path / "again")
    assert first.keys() == second.keys()
    for path in first:  # padding rows included: drawn again from the same rows with the same seed
        np.testing.assert_array_equal(second[path], first[path], err_msg=path)
    assert checkpoint.read_meta(tmp_path / "again")[:2] == checkpoint.read_meta(tmp_path / "ckpt")[:2]


def test_native_export_of_a_llama_with_memory(tmp_path):
    hf = hf_models.build(hf_models.llama_config())
    convert(hf_models.save(hf, tmp_path / "src"), tmp_path / "ckpt", chunk_size=16, global_size=2, stride=4,
            budget=8, **quiet)
    summary = export(tmp_path / "ckpt", tmp_path / "hf", **quiet)
    assert summary["layout"] == "native" and summary["vocab_size"] == 100 + 4  # source rows + CoMeT rows
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["comet_jax"]["global_beacon_ids"] == [102, 103]
    assert "model.layers.1.temp_memory_net.1.up_proj.weight" in read_tensors(tmp_path / "hf")

    # transformers loads the backbone (the memory nets are extra tensors it leaves aside)
    params, model, _, _ = checkpoint.load(tmp_path / "ckpt")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager",
                                                             dtype=torch.float32)
    tokens = np.random.default_rng(0).integers(0, 104, (1, 13))
    ours = np.asarray(backbone.full_logits(params, tokens, np.array([13]), model))[..., :104]
    np.testing.assert_allclose(hf_models.hf_logits(back, tokens), ours, rtol=1e-5, atol=1e-5)

    # --drop-memory: the same backbone, plain (CoMeT rows kept as vocabulary); --overwrite replaces
    summary = export(tmp_path / "ckpt", tmp_path / "hf_plain", drop_memory=True, **quiet)
    summary = export(tmp_path / "ckpt", tmp_path / "hf_plain", drop_memory=True, overwrite=True, **quiet)
    assert summary["layout"] == "plain" and summary["vocab_size"] == 104
    assert not [n for n in read_tensors(tmp_path / "hf_plain") if "memory_net" in n]
    assert "comet_jax" not in json.loads((tmp_path / "hf_plain" / "config.json").read_text())
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_plain", attn_implementation="eager",
                                                              dtype=torch.float32)
    np.testing.assert_array_equal(hf_models.hf_logits(plain, tokens), hf_models.hf_logits(back, tokens))

    # and our converter takes all of it back: settings, ids, memory nets, every real row
    convert(tmp_path / "hf", tmp_path / "back", **quiet)
    assert checkpoint.read_meta(tmp_path / "back")[:2] == checkpoint.read_meta(tmp_path / "ckpt")[:2]
    first, second = flat_params(tmp_path / "ckpt"), flat_params(tmp_path / "back")
    assert first.keys() == second.keys()
    for path in first:
        a, b = (first[path], second[path]) if path != "lm_head" else (first[path].T, second[path].T)
        real = slice(0, 104) if path in ("embed", "lm_head") else slice(None)  # padding rows are drawn anew
        np.testing.assert_array_equal(b[real], a[real], err_msg=path)


def test_export_hf_keeps_working_for_in_memory_params(tmp_path):
    from comet_jax.config import CometConfig, ModelConfig
    from comet_jax.export.write import export_hf
    from comet_jax.export.tensors import expected_shapes

    model = ModelConfig(vocab_size=256, num_real_tokens=200, hidden_size=32, intermediate_size=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, family="llama")
    comet = CometConfig(chunk_size=8, global_size=2, stride=4, budget=4, placeholder_id=196, temp_beacon_id=197,
                        global_beacon_ids=(198, 199))
    rng = np.random.default_rng(0)
    params = checkpoint.nest({p: rng.standard_normal(s).astype(np.float32)
                              for p, s in expected_shapes(model, comet).items()})
    export_hf(params, model, comet, tmp_path / "hf")  # a llama with memory: native
    got = read_tensors(tmp_path / "hf")
    np.testing.assert_array_equal(got["lm_head.weight"], np.asarray(params["lm_head"])[:, :200].T)
    np.testing.assert_array_equal(got["model.layers.1.global_memory_net.g_proj.weight"],
                                  np.asarray(params["layers"]["global_mem"]["gate"])[1][None])
