"""comet_jax.train.train_config: YAML + overrides onto dataclass defaults, types, validation."""

import os
from pathlib import Path

import pytest

from comet_jax.config import ConfigError
from comet_jax.train.train_config import (
    StageSection,
    TrainConfig,
    dump_yaml,
    load_config,
    run_dir,
    to_dict,
)
from comet_jax.train.train_config_checks import validate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def raises(match, fn, *args, **kwargs):
    with pytest.raises(ConfigError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_defaults_valid():
    cfg = load_config(None, [])
    assert cfg == TrainConfig()
    validate(cfg)
    validate(cfg, device_count=1)
    assert run_dir(cfg) == os.path.abspath("runs/tiny")
    assert run_dir(load_config(None, ["run.dir=/tmp/x"])) == "/tmp/x"
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0  # frozen


def test_yaml_and_overrides_merge(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 0.01\n  b2: 0.95\ntrain:\n  steps: 7\nlogging:\n")
    cfg = load_config(p, ["optim.lr=1e-4", "train.batch_size=4", "comet.planners={fixed: 0.5, random: 0.5}",
                          "model.tie_embeddings=true", "run.name=2024", "data.path="])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.b2 == 0.95 and cfg.train.steps == 7 and cfg.train.batch_size == 4
    assert cfg.optim.b1 == 0.9  # default kept
    assert cfg.comet.planners == {"fixed": 0.5, "random": 0.5}
    assert cfg.model.tie_embeddings is True
    assert cfg.run.name == "2024" and cfg.data.path == ""
    validate(cfg)


def test_float_accepts_yaml11_strings_and_ints(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 1e-4\n  eps: 1\n")
    cfg = load_config(p, [])
    assert cfg.optim.lr == 1e-4 and cfg.optim.eps == 1.0 and isinstance(cfg.optim.eps, float)
    assert load_config(None, ["optim.lr=5e-5"]).optim.lr == 5e-5
    raises(r"optim\.lr must be a float.*'fast'", load_config, None, ["optim.lr=fast"])


def test_unknown_keys_suggest(tmp_path):
    msg = raises(r"unknown key optim\.lrr", load_config, None, ["optim.lrr=1e-4"])
    assert "did you mean optim.lr?" in msg and "known keys of optim: lr, " in msg
    msg = raises(r"unknown key optim\.lrr", load_config, write(tmp_path, "optim:\n  lrr: 0.1\n"), [])
    assert "did you mean optim.lr?" in msg
    msg = raises(r"unknown key optimm", load_config, write(tmp_path, "optimm:\n  lr: 0.1\n"), [])
    assert "did you mean optim?" in msg
    raises(r"unknown key trian\.steps", load_config, None, ["trian.steps=3"])


def test_wrong_types(tmp_path):
    msg = raises(r"train\.steps", load_config, None, ["train.steps=ten"])
    assert "int" in msg and "'ten'" in msg
    raises(r"train\.steps must be an int.*True", load_config, None, ["train.steps=true"])  # bool is not int
    raises(r"train\.steps must be an int", load_config, None, ["train.steps=2.5"])
    raises(r"model\.remat must be one of full, dots, offload, none", load_config, write(tmp_path, "model:\n  remat: 1\n"), [])
    assert load_config(write(tmp_path, "model:\n  remat: false\n"), []).model.remat == "none"  # older spelling
    raises(r"optim\.lr must be a float", load_config, None, ["optim.lr=true"])
    raises(r"comet\.boundary_ids\[1\] must be an int", load_config, None, ["comet.boundary_ids=[1, x]"])
    raises(r"comet\.planners must be a mapping", load_config, None, ["comet.planners=fixed"])
    raises(r"model\.init must be a string", load_config, write(tmp_path, "model:\n  init: [a]\n"), [])
    raises(r"section train must be a mapping", load_config, write(tmp_path, "train: 5\n"), [])


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert missing in raises("does not exist", load_config, missing, [])
    bad = write(tmp_path, "optim: [unclosed\n", "bad.yaml")
    assert bad in raises("not valid YAML", load_config, bad, [])
    lst = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    assert lst in raises("top level must be a mapping", load_config, lst, [])
    assert load_config(write(tmp_path, "", "empty.yaml"), []) == TrainConfig()


def test_override_syntax():
    raises(r"'optim\.lr' has no '='", load_config, None, ["optim.lr"])
    raises(r"section\.key", load_config, None, ["lr=1"])
    raises(r"section\.key", load_config, None, ["a.b.c=1"])
    raises(r"section\.key.*data\.passkey\.digits=3", load_config, None, ["train.steps.x=1"])
    raises(r"section\.key", load_config, None, ["data.passkey.digits.x=1"])


def test_validate_mesh_and_batch():
    validate(load_config(None, ["mesh.fsdp=4"]), device_count=4)
    msg = raises(r"mesh data\*fsdp\*tensor\*stage = 8 but 4 devices", validate,
                 load_config(None, ["mesh.data=2", "mesh.fsdp=4"]), device_count=4)
    assert "mesh.fsdp=4" in msg
    validate(load_config(None, ["mesh.data=2", "mesh.fsdp=4"]))  # no device count: no mesh check
    raises(r"train\.batch_size \(6\) must be divisible by data parallelism mesh\.data\*mesh\.fsdp = 4",
           validate, load_config(None, ["train.batch_size=6", "mesh.fsdp=4"]))
    raises(r"optim\.grad_accum", validate, load_config(None, ["optim.grad_accum=3"]))
    raises(r"optim\.grad_accum", validate, load_config(None, ["optim.grad_accum=4", "mesh.fsdp=4"]))
    raises(r"processes \(3\)", validate, load_config(None, []), process_count=3)
    raises(r"model\.num_kv_heads \(2\) must be divisible by mesh\.tensor \(4\)", validate,
           load_config(None, ["mesh.tensor=4", "train.batch_size=8"]))


@pytest.mark.parametrize("overrides, match", [
    (["comet.chunk_size=1024"], r"comet\.chunk_size \(1024\) is larger than data\.seq_len \(512\)"),
    (["train.steps=0"], r"train\.steps must be > 0"),
    (["train.batch_size=-1"], r"train\.batch_size must be > 0"),
    (["optim.lr=0"], r"optim\.lr must be > 0"),
    (["optim.ema=1"], r"optim\.ema must be in \[0, 1\)"),
    (["optim.ema=-0.5"], r"optim\.ema must be in \[0, 1\)"),
    (["model.hidden_size=0"], r"model\.hidden_size must be > 0"),
    (["data.seq_len=0"], r"data\.seq_len must be > 0"),
    (["optim.grad_accum=0"], r"optim\.grad_accum must be > 0"),
    (["model.schedule=diagonal"], r"model\.schedule must be one of layer_major, chunk_major"),
    (["comet.mode=rnn"], r"comet\.mode must be one of comet, full"),
    (["comet.stride=0"], r"comet\.stride"),
    (["comet.stride=-2"], r"comet\.stride"),
    (["comet.budget=0"], r"comet\.budget must be > 0"),
    (["comet.planners={fixd: 1}"], r"comet\.planners\.fixd.*did you mean comet\.planners\.fixed"),
    (["comet.planners={fixed: 0, random: 0}"], r"comet\.planners needs a positive weight"),
    (["comet.planners={semantic: 1}"], r"comet\.boundary_ids"),
    (["data.source=parquet"], r"data\.source must be one of passkey, jsonl, arrayrecord"),
    (["data.source=jsonl"], r"data\.source=jsonl needs data\.path"),
    (["data.source=arrayrecord"], r"data\.path"),
    (["data.tokenizer=checkpoint"], r"model\.init"),
    (["model.num_heads=3"], r"model\.num_heads \(3\) must be a multiple of model\.num_kv_heads \(2\)"),
    (["model.dtype=float16"], r"model\.dtype must be one of float32, bfloat16"),
    (["model.param_dtype=fp32"], r"model\.param_dtype"),
    (["model.attention=flash"], r"model\.attention must be one of auto, xla, splash, cudnn"),
    (["model.init=ckpt/x", "data.tokenizer=checkpoint", "model.attention=flash"], r"model\.attention must be one"),
    (["data.curriculum=[{until_step: 10}]"], r"data\.curriculum\[0\] must be a mapping"),
    (["data.curriculum=[{until_step: 10, seq_len: 0}]"], r"data\.curriculum\[0\]\.seq_len must be a positive"),
    (["data.curriculum=[{until_step: 10, seq_len: 32}]"], r"comet\.chunk_size \(64\).*data\.curriculum\[0\]"),
    (["data.curriculum=[{until_step: 10, seq_len: 64}, {until_step: 5, seq_len: 128}]"],
     r"data\.curriculum\[1\]\.until_step"),
    (["data.curriculum=[{until_step: 10, seq_len: 64, chunk_size: 128}]"],
     r"data\.curriculum\[0\]\.chunk_size \(128\) is larger than data\.curriculum\[0\]\.seq_len"),
    (["data.curriculum=[{until_step: 10, seq_len: 64, chunks: 2}]"],
     r"unknown key data\.curriculum\[0\]\.chunks.*did you mean data\.curriculum\[0\]\.chunk_size"),
    (["data.curriculum=[{until_step: 10, seq_len: 64, passkey: {min_len: -1}}]"],
     r"data\.curriculum\[0\]\.passkey\.min_len must be a positive"),
    (["data.curriculum=[{until_step: 10, seq_len: 64, passkey: {needles: -1}}]"],
     r"data\.curriculum\[0\]\.passkey\.needles must be a positive"),
    (["data.curriculum=[{until_step: 10, seq_len: 64, passkey: {shift: -2}}]"],
     r"data\.curriculum\[0\]\.passkey\.shift must be an int >= 0 \(or -1: the section's value\)"),
    (["data.curriculum=[{until_step: 10, seq_len: 64, passkey: {needls: 1}}]"],
     r"unknown key data\.curriculum\[0\]\.passkey\.needls.*did you mean data\.curriculum\[0\]\.passkey\.needles"),
    (["data.passkey.shift=-1"], r"data\.passkey\.shift must be >= 0, got -1"),
    (["data.passkey.shift_at=end"], r"data\.passkey\.shift_at must be one of task, start, got 'end'"),
    (["data.passkey.shift_share=2"], r"data\.passkey\.shift_share must be in \[0, 1\].*got 2"),
    (["data.passkey.shift_share=.nan"], r"data\.passkey\.shift_share must be a finite number"),
    (["data.passkey.near=1.5"], r"data\.passkey\.near must be in \[0, 1\].*got 1\.5"),
    (["data.passkey.needles=0"], r"data\.passkey\.needles must be > 0"),
    (["data.passkey.questions=0"], r"data\.passkey\.questions must be > 0"),
    (["data.passkey.digits=0"], r"data\.passkey\.digits must be > 0"),
    (["data.passkey.min_len=-1"], r"data\.passkey\.min_len must be >= 0"),
    (["data.passkey.loss=some"], r"data\.passkey\.loss must be answer or all"),
    (["data.passkey.end=1."], r"data\.passkey\.end must not contain digits.*data\.passkey\.end=\."),
    (["data.passkey.filler=shuffled"], r"data\.passkey\.filler must be one of cycle, random, got 'shuffled'"),
    (["data.passkey.repeats=last"], r"data\.passkey\.repeats must be one of spread, end, got 'last'"),
    (["data.passkey.named=4"], r"data\.passkey\.named must be 0\.\.3 \(one key per name: blue, green, yellow\), got 4"),
])
def test_validate_errors(overrides, match):
    raises(match, lambda: validate(load_config(None, overrides)))


def test_validate_allowed():
    validate(load_config(None, ["optim.warmup_steps=1000", "train.steps=5"]))  # warm-up past the end
    validate(load_config(None, ["comet.stride=-1", "comet.budget=0", "comet.global_size=0"]))
    validate(load_config(None, ["comet.mode=full", "data.seq_len=32"]))  # no chunks in full mode
    validate(load_config(None, ["model.init=ckpt/x", "data.tokenizer=checkpoint", "mesh.tensor=4"]))
    validate(load_config(None, ["model.attention=splash"]))


def test_dump_load_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-4", "optim.eps=1e-12", "comet.planners={fixed: 0.25, random: 0.75}",
                             "comet.boundary_ids=[10, 13]", "data.curriculum=[{until_step: 5, seq_len: 64}]",
                             "run.dir=out/x", "model.tie_embeddings=true"])
    text = dump_yaml(cfg)
    assert load_config(write(tmp_path, text), []) == cfg
    assert to_dict(cfg)["optim"]["lr"] == 1e-4
    assert load_config(write(tmp_path, dump_yaml(TrainConfig()), "d.yaml"), []) == TrainConfig()


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "qwen3_comet_32k.yaml", "llama3_8b_comet_32k.yaml",
                                  "llama3_8b_comet_32k_v5e16.yaml", "qwen3_8b_comet_32k_v5e16.yaml",
                                  "finetune.yaml"])
def test_shipped_configs(name, tmp_path):
    cfg = load_config(str(CONFIGS / name), [])
    validate(cfg)
    assert load_config(write(tmp_path, dump_yaml(cfg)), []) == cfg


def test_shipped_recipes():
    tiny = load_config(str(CONFIGS / "tiny_cpu.yaml"), [])
    assert (tiny.model.hidden_size, tiny.comet.chunk_size, tiny.data.seq_len, tiny.train.steps) == (128, 64, 512, 300)
    assert tiny.data.curriculum == [StageSection(until_step=150, seq_len=256)]
    validate(tiny, device_count=1)
    for name in ("qwen3_comet_32k.yaml", "llama3_8b_comet_32k.yaml"):
        cfg = load_config(str(CONFIGS / name), [])
        assert (cfg.data.seq_len, cfg.comet.chunk_size, cfg.comet.global_size, cfg.comet.stride,
                cfg.comet.budget) == (32768, 2048, 512, 8, 2048)
        assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, cfg.optim.weight_decay,
                cfg.optim.memory_lr_mult) == (5e-5, 10, 0.0, 0.0, 5.0)
        assert cfg.model.dtype == "bfloat16" and cfg.model.remat == "full" and cfg.model.init != "scratch"
        assert cfg.data.tokenizer == "checkpoint" and cfg.data.source == "jsonl"
        validate(cfg, device_count=8)
    # the v5e-16 layouts: the same recipe (model, CoMeT, optimizer, batch), only the layout differs
    from dataclasses import replace

    for base, v5e in (("llama3_8b_comet_32k.yaml", "llama3_8b_comet_32k_v5e16.yaml"),
                      ("qwen3_comet_32k.yaml", "qwen3_8b_comet_32k_v5e16.yaml")):
        a, b = (load_config(str(CONFIGS / n), []) for n in (base, v5e))
        assert b.model == replace(a.model, remat="offload") and (b.comet, b.data) == (a.comet, a.data)
        assert replace(b.optim, grad_accum=1) == replace(a.optim, grad_accum=1)
        assert b.train.batch_size // b.optim.grad_accum * b.optim.grad_accum == b.train.batch_size >= 8
        m = b.mesh
        assert m.data * m.fsdp * m.tensor * m.stage == 16 and m.stage > 1
        validate(b, device_count=16)


def test_curriculum_stage_needles():
    from comet_jax.train.trainer import curriculum_stage

    cfg = load_config(None, ["data.passkey.needles=3", "data.passkey.end=.",
                             "data.curriculum=[{until_step: 10, seq_len: 128, passkey: {needles: 1}}, "
                             "{until_step: 20, seq_len: 256}]"])
    validate(cfg)
    assert [curriculum_stage(cfg, s).needles for s in (0, 10, 20)] == [1, 3, 3]
    assert [curriculum_stage(cfg, s).shift for s in (0, 10, 20)] == [0, 0, 0]
    shifted = load_config(None, ["data.passkey.shift=15", "data.curriculum=[{until_step: 10, seq_len: 128, "
                                 "passkey: {shift: 0}}, {until_step: 20, seq_len: 256}, {until_step: 30, seq_len: 256, "
                                 "passkey: {shift: 7}}]"])
    validate(shifted)
    assert [curriculum_stage(shifted, s).shift for s in (0, 10, 20, 30)] == [0, 15, 7, 15]
    assert cfg.data.passkey.end == "."


def test_duplicate_keys_are_refused_at_any_depth(tmp_path, capsys):
    from comet_jax.train.cli import main

    # a second train: section would silently replace the whole first one
    p = write(tmp_path, "train:\n  steps: 7\n  batch_size: 4\noptim:\n  lr: 0.01\ntrain:\n  steps: 9\n")
    assert raises("duplicate", load_config, p, []) == f"{p}:6: duplicate key 'train' (first at line 1)"
    nested = write(tmp_path, "optim:\n  lr: 0.01\n  b1: 0.8\n  lr: 0.02\n", "nested.yaml")
    assert raises("duplicate", load_config, nested, []) == f"{nested}:4: duplicate key 'lr' (first at line 2)"
    deep = write(tmp_path, "comet:\n  planners: {fixed: 0.5, fixed: 0.5}\n", "deep.yaml")
    assert raises("duplicate", load_config, deep, []) == f"{deep}:2: duplicate key 'fixed' (first at line 2)"
    raises(r"override comet\.planners: duplicate key 'fixed'", load_config, None,
           ["comet.planners={fixed: 1, fixed: 2}"])
    # a YAML merge may still override what it merged in
    ok = write(tmp_path, "train: {<<: {steps: 3, log_every: 1}, steps: 5}\n", "ok.yaml")
    assert load_config(ok, []).train.steps == 5
    assert main(["--config", p, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {p}:6: duplicate key 'train' (first at line 1)\n"


def test_run_dir_is_absolute_and_normalised(tmp_path, monkeypatch):
    # a `..` in run.dir made the final export fail ("Invalid file path"), and its retry too
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.dir=a/../runs/x"])
    assert cfg.run.dir == str(tmp_path / "runs" / "x") and run_dir(cfg) == cfg.run.dir
    assert run_dir(load_config(None, ["run.name=y"])) == str(tmp_path / "runs" / "y")
    assert load_config(write(tmp_path, dump_yaml(cfg)), []) == cfg
    from comet_jax.train.train_checkpoint import TrainCheckpointer

    ckpt = TrainCheckpointer("a/../runs/x/checkpoints", async_save=False)
    assert ckpt.directory == tmp_path / "runs" / "x" / "checkpoints"
    ckpt.close()


def test_passkey_seq_len_below_the_shortest_prompt_is_refused_before_anything_is_written(tmp_path, capsys):
    from comet_jax.train.cli import main
    from comet_jax.train.train_config_checks import validate_data

    msg = raises(r"data\.seq_len \(100\) is too short for data\.source=passkey", validate_data,
                 load_config(None, ["data.seq_len=100"]))
    shortest = int(msg.rsplit(">= ", 1)[1])
    assert 100 < shortest <= 320 and "5-digit key" in msg and "data.tokenizer=byte" in msg
    validate_data(load_config(None, [f"data.seq_len={shortest}"]))
    raises(r"data\.curriculum\[0\]\.seq_len \(64\)", validate_data,
           load_config(None, ["data.curriculum=[{until_step: 5, seq_len: 64}]"]))
    raises(r"data\.passkey\.min_len \(50\)", validate_data, load_config(None, ["data.passkey.min_len=50"]))
    raises(r"data\.curriculum\[0\]\.passkey\.min_len \(50\)", validate_data,
           load_config(None, ["data.curriculum=[{until_step: 5, seq_len: 512, passkey: {min_len: 50}}]"]))
    validate_data(load_config(None, ["data.source=jsonl", "data.path=x", "data.seq_len=8"]))  # not passkey
    for name in ("tiny_cpu.yaml", "demo_passkey.yaml"):
        validate_data(load_config(str(CONFIGS / name), []))
    run = tmp_path / "run"
    assert main(["data.seq_len=100", "comet.chunk_size=64", f"run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "data.seq_len (100)" in err, err
    assert not run.exists()


# ---------------------------------------------------------------------------------------
# data.passkey: the passkey task's options, a section inside data


def test_passkey_section_from_yaml_and_overrides(tmp_path):
    from comet_jax.train.train_config import PasskeySection

    p = write(tmp_path, 'data:\n  passkey:\n    digits: 3\n    end: "."\n')
    cfg = load_config(p, [])
    assert cfg.data.passkey == PasskeySection(digits=3, end=".")  # the keys left out keep their defaults
    assert load_config(None, ["data.passkey.digits=3"]).data.passkey == PasskeySection(digits=3)
    assert load_config(None, ["data.passkey={digits: 3, shift: 4}"]).data.passkey == PasskeySection(digits=3, shift=4)
    # a mapping sets its keys only, as a section does: the file's end stays
    assert load_config(p, ["data.passkey={digits: 4}"]).data.passkey == PasskeySection(digits=4, end=".")
    assert load_config(None, ["data.passkey.end=1."]).data.passkey.end == "1."  # text as written
    assert load_config(write(tmp_path, "data:\n  passkey:\n", "empty.yaml"), []) == TrainConfig()
    raises(r"data\.passkey must be a mapping of its keys \(min_len, digits, .*got 5", load_config, None,
           ["data.passkey=5"])
    raises(r"data\.passkey\.digits must be an int.*'three'", load_config, None, ["data.passkey.digits=three"])


def test_unknown_passkey_keys_suggest(tmp_path):
    msg = raises(r"unknown key data\.passkey\.digts \(in command line\)", load_config, None, ["data.passkey.digts=3"])
    assert "known keys of data.passkey: min_len, digits, loss" in msg
    assert msg.endswith("did you mean data.passkey.digits?")
    msg = raises(r"unknown key data\.passkey\.digts", load_config, None, ["data.passkey={digts: 3}"])
    assert msg.endswith("did you mean data.passkey.digits?")
    p = write(tmp_path, "data:\n  passkey:\n    shift_shar: 0.5\n")
    msg = raises(rf"unknown key data\.passkey\.shift_shar \(in {p}\)", load_config, p, [])
    assert msg.endswith("did you mean data.passkey.shift_share?")
    msg = raises(r"unknown key data\.pasky \(in command line\)", load_config, None, ["data.pasky.digits=3"])
    assert msg.endswith("did you mean data.passkey?")


def test_flat_passkey_keys_are_read_with_one_deprecation_line(tmp_path, capsys):
    assert load_config(None, ["data.passkey_digits=3"]) == load_config(None, ["data.passkey.digits=3"])
    assert capsys.readouterr().err == ("warning: data.passkey_digits on the command line is deprecated: "
                                       "write data.passkey.digits (read as that)\n")
    p = write(tmp_path, "data:\n  passkey_digits: 3\n  passkey_end: .\n")
    cfg = load_config(p, ["data.passkey_digits=4"])
    assert (cfg.data.passkey.digits, cfg.data.passkey.end) == (4, ".")
    assert capsys.readouterr().err.splitlines() == [  # once per key
        f"warning: data.passkey_digits in {p} is deprecated: write data.passkey.digits (read as that)",
        f"warning: data.passkey_end in {p} is deprecated: write data.passkey.end (read as that)"]
    # a stage's flat keys: read as its passkey section, one line per key over all stages
    flat = load_config(None, ["data.curriculum=[{until_step: 5, seq_len: 512, passkey_shift: 0, passkey_needles: 2}, "
                              "{until_step: 9, seq_len: 512, passkey_shift: 3}]"])
    nested = load_config(None, ["data.curriculum=[{until_step: 5, seq_len: 512, passkey: {shift: 0, needles: 2}}, "
                                "{until_step: 9, seq_len: 512, passkey: {shift: 3}}]"])
    assert flat == nested
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: data.curriculum[0].passkey_shift on the command line is deprecated: write "
                   "data.curriculum[0].passkey.shift, i.e. passkey: {shift: ...} in the stage (read as that)",
                   "warning: data.curriculum[0].passkey_needles on the command line is deprecated: write "
                   "data.curriculum[0].passkey.needles, i.e. passkey: {needles: ...} in the stage (read as that)"]


def test_both_spellings_of_a_passkey_key_the_later_wins(tmp_path):
    p = write(tmp_path, "data:\n  passkey_digits: 3\n  passkey:\n    digits: 4\n")
    assert load_config(p, []).data.passkey.digits == 4
    assert load_config(p, ["data.passkey_digits=6"]).data.passkey.digits == 6
    assert load_config(None, ["data.passkey_digits=3", "data.passkey.digits=4"]).data.passkey.digits == 4
    assert load_config(None, ["data.passkey.digits=4", "data.passkey_digits=3"]).data.passkey.digits == 3
    stage = load_config(None, ["data.curriculum=[{until_step: 5, seq_len: 512, passkey_shift: 0, "
                               "passkey: {shift: 3, needles: 2}}, "
                               "{until_step: 9, seq_len: 512, passkey: {shift: 3}, passkey_shift: 0}]"])
    assert [(s.passkey.shift, s.passkey.needles) for s in stage.data.curriculum] == [(3, 2), (0, 0)]


def test_flat_spelling_of_the_demo_config_reads_the_same(tmp_path):
    # configs/demo_passkey.yaml's data section as it was written before data.passkey
    flat = write(tmp_path, """data:
  source: passkey
  tokenizer: passkey
  seq_len: 512
  passkey_loss: answer
  passkey_questions: 4
  passkey_end: "."
  passkey_shift: 15
  passkey_shift_share: 0.5
  passkey_wording: scrambled
  passkey_near: 0.5
  curriculum:
    - {until_step: 1200, seq_len: 128, chunk_size: 128, passkey_shift: 0, passkey_wording: fixed, passkey_near: 0}
    - {until_step: 2200, seq_len: 128, chunk_size: 32, passkey_shift: 0, passkey_wording: fixed, passkey_near: 0}
    - {until_step: 3400, seq_len: 128, passkey_shift: 0, passkey_wording: fixed, passkey_near: 0}
    - {until_step: 6200, seq_len: 256, passkey_shift: 0, passkey_near: 0}
    - {until_step: 8200, seq_len: 512, passkey_near: 0.2}
""")
    assert load_config(flat, []).data == load_config(str(CONFIGS / "demo_passkey.yaml"), []).data


def test_print_config_of_another_source_names_no_passkey_key(tmp_path, capsys):
    from comet_jax.train.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    sets = ["data.source=jsonl", f"data.path={data}", "data.curriculum=[{until_step: 5, seq_len: 128}]",
            "data.passkey.digits=5"]  # a default value is allowed, and left out as well
    assert main([*sets, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "passkey" not in out and "source: jsonl" in out
    assert load_config(write(tmp_path, out), []) == load_config(None, sets)
    # the demo config: the section, nested, and each stage's own
    demo = str(CONFIGS / "demo_passkey.yaml")
    assert main(["--config", demo, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  passkey:\n    min_len: 0\n    digits: 5\n    loss: answer\n    needles: 1\n    questions: 4\n" in out
    assert "    passkey:\n      min_len: 0\n      needles: 0\n      shift: 0\n" in out and "passkey_" not in out
    assert load_config(write(tmp_path, out, "demo.yaml"), []) == load_config(demo, [])


def test_print_config_ends_with_the_curriculum_as_it_runs(tmp_path, capsys):
    """Each stage's inherited settings filled in, numbered as the log counts steps, as comments
    (the output still loads as the config); a stage past train.steps is not listed."""
    from comet_jax.train.cli import main

    sets = ["data.passkey={shift: 15, near: 0.2, wording: composed}", "train.steps=700",
            "data.curriculum=[{until_step: 300, seq_len: 128, chunk_size: 128, passkey: {shift: 0, near: 0}}, "
            "{until_step: 600, seq_len: 256, passkey: {wording: fixed}}, {until_step: 900, seq_len: 384}]"]
    assert main([*sets, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.split("\n# the curriculum as it runs (inherited settings filled in):\n")[1].splitlines() == [
        "# steps 1-300: seq_len 128, chunk_size 128; passkey min_len 128, needles 1, shift 0, wording composed, near 0",
        "# steps 301-600: seq_len 256, chunk_size 64; passkey min_len 256, needles 1, shift 15, wording fixed, "
        "near 0.2",
        "# steps 601-700: seq_len 384, chunk_size 64; passkey min_len 384, needles 1, shift 15, wording composed, "
        "near 0.2"]
    assert load_config(write(tmp_path, out), []) == load_config(None, sets)
    assert main(["--print-config"]) == 0 and "curriculum as it runs" not in capsys.readouterr().out


def test_passkey_settings_with_another_source_are_refused(tmp_path, capsys):
    from comet_jax.train.cli import main

    jsonl = ["data.source=jsonl", "data.path=x.jsonl"]
    validate(load_config(None, jsonl + ["data.passkey.digits=5", "data.curriculum=[{until_step: 5, seq_len: 512}]"]))
    assert raises("applies only", validate, load_config(None, jsonl + ["data.passkey.digits=3"])) == (
        "data.passkey.digits applies only to data.source=passkey; remove it or set data.source=passkey")
    raises(r"^data\.curriculum\[0\]\.passkey\.shift applies only to data\.source=passkey; remove it or set "
           r"data\.source=passkey$", validate,
           load_config(None, jsonl + ["data.curriculum=[{until_step: 5, seq_len: 512, passkey: {shift: 0}}]"]))
    assert main(["--config", str(CONFIGS / "demo_passkey.yaml"), *jsonl, "--print-config"]) == 2
    assert capsys.readouterr().err == ("error: data.passkey.questions applies only to data.source=passkey; "
                                       "remove it or set data.source=passkey\n")


def test_dump_load_round_trip_with_passkey_settings(tmp_path):
    cfg = load_config(None, ["data.passkey={digits: 3, end: ., shift: 7, shift_share: 0.25, loss: all}",
                             "data.curriculum=[{until_step: 5, seq_len: 256, passkey: {min_len: 200, needles: 2}}]"])
    validate(cfg)
    assert load_config(write(tmp_path, dump_yaml(cfg)), []) == cfg
