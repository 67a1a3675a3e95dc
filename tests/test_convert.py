"""The HF -> comet-jax converter: layouts, CoMeT additions, refusals, atomicity."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import hf_models
from comet_jax import checkpoint
from comet_jax.convert import hf_import
from comet_jax.convert.hf_import import ConvertError, convert
from comet_jax.model import backbone

quiet = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = hf_models.build(hf_models.llama_config())
    return hf, hf_models.save(hf, tmp_path_factory.mktemp("llama_src"))


@pytest.fixture(scope="module")
def comet_ckpt(llama, tmp_path_factory):
    hf, src = llama
    dst = tmp_path_factory.mktemp("llama_comet") / "ckpt"
    summary = convert(src, dst, chunk_size=16, global_size=4, stride=4, budget=8, **quiet)
    return hf, src, dst, summary


def test_comet_rows_and_memory_params(comet_ckpt):
    hf, src, dst, summary = comet_ckpt
    params, model, comet, meta = checkpoint.load(dst)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    v, d, layers = 100, 32, 2
    # ids: placeholder, temp beacon, then the G global beacons, right after the source rows
    assert (comet.placeholder_id, comet.temp_beacon_id, comet.global_beacon_ids) == (100, 101, (102, 103, 104, 105))
    assert (comet.chunk_size, comet.global_size, comet.stride, comet.budget) == (16, 4, 4, 8)
    assert model.vocab_size == 256 and model.num_real_tokens == 106 and summary["added_tokens"] == 6
    # original rows bit-identical, new rows around the mean of the old ones
    embed, head = np.asarray(params["embed"]), np.asarray(params["lm_head"])
    assert embed.shape == (256, d) and head.shape == (d, 256)
    np.testing.assert_array_equal(embed[:v], sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(head[:, :v], sd["lm_head.weight"].T)
    for old, new in ((embed[:v], embed[v:]), (head[:, :v].T, head[:, v:].T)):
        spread = old.std(axis=0)
        assert np.all(np.abs(new.mean(axis=0) - old.mean(axis=0)) < 0.05 * spread)
        assert np.all(new.std(axis=0) < 0.05 * spread)  # close to the mean ...
        assert np.unique(new, axis=0).shape[0] == new.shape[0]  # ... but distinct rows
    # backbone tensors transposed to (in, out)
    np.testing.assert_array_equal(params["layers"]["wq"][1], sd["model.layers.1.self_attn.q_proj.weight"].T)
    # memory nets: shapes and init statistics of docs/design.md §1.4
    g, t = params["layers"]["global_mem"], params["layers"]["temp_mem"]
    shapes = {k: v.shape for k, v in {**{f"g.{k}": x for k, x in g.items()}, **{f"t.{k}": x for k, x in t.items()}}.items()}
    assert shapes == {"g.norm": (layers, d), "g.gate": (layers, 2 * d), "g.down": (layers, d, 8),
                      "g.up": (layers, 8, d), "t.norm": (layers, d), "t.down": (layers, d, 8), "t.up": (layers, 8, d)}
    assert np.all(g["norm"] == 1) and np.all(t["norm"] == 1)
    for w in (g["gate"], g["down"], g["up"], t["down"], t["up"]):
        assert abs(float(np.std(w)) - 0.02) < 0.005 and abs(float(np.mean(w))) < 0.005


def test_converted_comet_model_keeps_source_logits(comet_ckpt):
    hf, src, dst, _ = comet_ckpt
    params, model, _, _ = checkpoint.load(dst)
    tokens = np.random.default_rng(0).integers(0, 100, (1, 20))
    ours = np.asarray(backbone.full_logits(params, tokens, np.array([20]), model))
    ref = hf_models.hf_logits(hf, tokens)
    # the comet tokens are live rows (they get a probability), the padding rows are not
    assert np.all(np.isfinite(ours[..., :106])) and np.all(np.isneginf(ours[..., 106:]))
    np.testing.assert_allclose(ours[..., :100], ref, atol=1e-4)


def test_no_memory_adds_nothing(llama, tmp_path):
    hf, src = llama
    summary = convert(src, tmp_path / "c", global_size=0, stride=-1, **quiet)
    params, model, comet, _ = checkpoint.load(tmp_path / "c")
    assert summary["added_tokens"] == 0 and model.num_real_tokens == 100 and not comet.has_memory
    assert "global_mem" not in params["layers"] and "temp_mem" not in params["layers"]


def test_sharded_and_bfloat16_sources(tmp_path):
    hf = hf_models.build(hf_models.qwen3_config(num_hidden_layers=4))
    src = hf_models.save(hf, tmp_path / "src", dtype=torch.bfloat16, max_shard_size="40KB")
    shards = sorted(src.glob("*.safetensors"))
    assert len(shards) >= 3 and (src / "model.safetensors.index.json").is_file()
    summary = convert(src, tmp_path / "dst", global_size=2, stride=8, budget=4, **quiet)
    assert summary["dtype"] == "bfloat16"
    params, model, _, _ = checkpoint.load(tmp_path / "dst")
    assert model.param_dtype == "bfloat16" and params["layers"]["wq"].dtype.name == "bfloat16"
    ref = {}
    for s in shards:
        ref.update(load_file(s))
    np.testing.assert_array_equal(params["layers"]["w_down"][3], ref["model.layers.3.mlp.down_proj.weight"].T)
    assert "lm_head" not in params  # tied
    # bf16 source -> float32 checkpoint on request
    convert(src, tmp_path / "f32", global_size=0, stride=-1, dtype="float32", **quiet)
    p32, m32, _, _ = checkpoint.load(tmp_path / "f32")
    assert p32["embed"].dtype == np.float32
    np.testing.assert_array_equal(p32["embed"][:120], ref["model.embed_tokens.weight"].astype(np.float32))


def test_tokenizer_gets_comet_tokens(llama, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf, src0 = llama
    src = tmp_path / "src"
    shutil.copytree(src0, src)
    vocab = {f"w{i}": i for i in range(90)}  # fewer tokens than the 100 embedding rows, as in Qwen3
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    convert(src, tmp_path / "dst", global_size=3, stride=4, budget=8, **quiet)
    _, comet, meta = checkpoint.read_meta(tmp_path / "dst")
    new = Tokenizer.from_file(str(tmp_path / "dst" / "tokenizer.json"))
    assert new.token_to_id("<|comet_placeholder|>") == comet.placeholder_id == 100
    assert new.token_to_id("<|comet_temp_beacon|>") == comet.temp_beacon_id == 101
    assert [new.token_to_id(f"<|comet_global_beacon_{j}|>") for j in range(3)] == list(comet.global_beacon_ids)
    assert new.encode("w3 w7").ids == [3, 7]


@pytest.mark.parametrize("case", ["architecture", "rope", "missing_config", "missing_tensor", "no_weights",
                                  "existing_dst", "src_missing"])
def test_refusals_write_nothing(llama, tmp_path, case):
    hf, src0 = llama
    src = tmp_path / "src"
    shutil.copytree(src0, src)
    dst = tmp_path / "dst"
    cfg = json.loads((src / "config.json").read_text())
    expect = {"architecture": "GPT2LMHeadModel", "rope": "yarn", "missing_config": "config.json",
              "missing_tensor": "layers.wk of layer 1", "no_weights": "no *.safetensors",
              "existing_dst": "already exists", "src_missing": "does not exist"}[case]
    if case == "architecture":
        cfg["architectures"] = ["GPT2LMHeadModel"]
    if case == "rope":
        cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (src / "config.json").write_text(json.dumps(cfg))
    if case == "missing_config":
        (src / "config.json").unlink()
    if case == "missing_tensor":
        from safetensors.numpy import save_file
        tensors = load_file(src / "model.safetensors")
        del tensors["model.layers.1.self_attn.k_proj.weight"]
        save_file(tensors, src / "model.safetensors")
    if case == "no_weights":
        (src / "model.safetensors").unlink()
    if case == "existing_dst":
        dst.mkdir()
        (dst / "keep").write_text("x")
    if case == "src_missing":
        src = tmp_path / "nope"
    proc = subprocess.run([sys.executable, "-m", "comet_jax.convert", str(src), str(dst), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    if case == "existing_dst":
        assert sorted(p.name for p in dst.iterdir()) == ["keep"]
    else:
        assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dst")] == []


def test_interrupted_conversion_leaves_nothing(llama, tmp_path, monkeypatch):
    hf, src = llama
    calls = {"n": 0}
    real_write = checkpoint.StreamingWriter.write

    def failing_write(self, path, value):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, path, value)

    monkeypatch.setattr(checkpoint.StreamingWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "dst", **quiet)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces(llama, tmp_path):
    hf, src = llama
    convert(src, tmp_path / "dst", global_size=0, stride=-1, **quiet)
    with pytest.raises(Exception, match="already exists"):
        convert(src, tmp_path / "dst", **quiet)
    convert(src, tmp_path / "dst", global_size=2, stride=-1, overwrite=True, **quiet)
    _, comet, _ = checkpoint.read_meta(tmp_path / "dst")
    assert comet.global_size == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_grow_rows_statistics():
    rng = np.random.default_rng(0)
    old = rng.normal(3.0, 2.0, (500, 16)).astype(np.float32)
    new = hf_import.grow_rows(old, 200, rng)
    assert new.dtype == np.float32 and new.shape == (200, 16)
    np.testing.assert_allclose(new.mean(0), old.mean(0), atol=0.02)
    np.testing.assert_allclose(new.std(0), np.sqrt(1e-5) * old.std(0), rtol=0.25)


def test_small_blocks_write_the_same_checkpoint(comet_ckpt, tmp_path, monkeypatch):
    # Every leaf in many blocks: stacked leaves a layer at a time, embed in row blocks that
    # straddle the first new row, the transposed lm_head in column blocks, the new rows'
    # statistics over row blocks (equal up to float64 rounding in the covariance).
    hf, src, dst, _ = comet_ckpt
    monkeypatch.setattr(checkpoint, "BLOCK_BYTES", 7 * 32 * 4)
    convert(src, tmp_path / "small", chunk_size=16, global_size=4, stride=4, budget=8, **quiet)
    ref, small = (checkpoint.flatten(checkpoint.load_params(d)) for d in (dst, tmp_path / "small"))
    assert ref.keys() == small.keys()
    for path in ref:
        if path in ("embed", "lm_head"):
            np.testing.assert_allclose(small[path], ref[path], rtol=1e-6, atol=1e-9)
            rows = small[path] if path == "embed" else small[path].T
            np.testing.assert_array_equal(rows[:100], (ref[path] if path == "embed" else ref[path].T)[:100])
        else:
            np.testing.assert_array_equal(small[path], ref[path])


def test_restore_onto_a_mesh(comet_ckpt):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    _, _, dst, _ = comet_ckpt
    plain = checkpoint.load_params(dst)
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"))
    specs = {"embed": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"), "layers.wq": P("fsdp", None, "tensor"),
             "layers.w_down": P(None, "tensor", "fsdp")}
    shardings = checkpoint.nest({p: NamedSharding(mesh, specs.get(p, P())) for p in checkpoint.flatten(plain)})
    sharded = checkpoint.load_params(dst, shardings)
    for path, value in checkpoint.flatten(sharded).items():
        assert value.sharding.spec == specs.get(path, P()) and len(value.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(value), checkpoint.flatten(plain)[path])


def test_checkpoints_written_by_orbax_v1_still_load(tmp_path):
    """Older versions wrote DIR/params with Orbax's experimental v1 API; they read the same."""
    import jax
    from orbax.checkpoint.experimental import v1

    from comet_jax import checkpoint

    tree = {"embed": np.arange(12, dtype=np.float32).reshape(4, 3), "layers": {"wq": np.ones((2, 3, 3), np.float32)}}
    v1.save_pytree(tmp_path / "params", tree)
    got = checkpoint.load_params(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), tree)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    got = checkpoint.load_params(tmp_path, jax.tree.map(lambda _: one, tree))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), tree)
