#!/usr/bin/env python
"""Regenerate tests/fixtures/official_generation/ with the official CoMeT PyTorch code.

Not run by CI: it needs the official code (the `talos` package) and torch. Usage:

    python -m venv /tmp/venv-official
    /tmp/venv-official/bin/pip install torch==2.13.0 "transformers==4.53.2" safetensors numpy
    /tmp/venv-official/bin/python scripts/official/make_generation_fixtures.py \
        --official-root /path/to/official-comet [--out tests/fixtures/official_generation]

For each checkpoint of CHECKPOINTS it instantiates the official `MemQwen3ForCausalLM` from a
config, sets every weight from a seeded torch generator, and writes the checkpoint with the
official class's `save_pretrained` (`<name>/config.json`, `<name>/model.safetensors`). Then,
for every prompt of that checkpoint, it runs the official generation path exactly as the
official code uses it: `Gentransform` (pre-tokenized input, fixed chunks) and
`GenBatchCollator`, then `model.generate(**batch)` greedy for MAX_NEW tokens, in float32 with
sdpa attention. It records, in `<name>/expected.json`:

- `output`: the tokens `generate` appended (the official output, forced temp beacons included);
- `forced`: per output token, whether the official decoder forced it (a temp beacon it
  inserted: `need_insert_beacon` was set when `_update_model_kwargs_for_generation` ran);
- `text`: `output` without the forced beacons, cut before the first CoMeT special id the
  model itself chose (placeholder, temp beacon or a global beacon): what comet-generate
  --official-layout must print, token for token;
- `fed`: what the official decoder fed at each decode step (token and position id), taken
  with a forward pre-hook on the inner model; `prompt_fed` the same for the prefill;
- `margins`: top-1 minus top-2 logit of each token the model chose (not forced), so a test
  can see how far from a tie each greedy choice was;
- `last_chunk_text_length`: the collator's starting value of the official beacon counter.

The official code is only imported here; nothing of it is copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

MAX_NEW = 12

# name: (config overrides, weight seed, prompt lengths). Prompts are drawn from ids below the
# CoMeT rows; each continuation stays inside the prompt's last chunk.
CHECKPOINTS = {
    "c32_s8_g4_b8": dict(
        config=dict(chunk_size=32, temp_beacon_stride=8, temp_mem_budget=8, n_global=4),
        seed=1,
        # 1 chunk (first chunk, empty queue), 2 chunks (queue 3 of 8), 5 chunks (queue full)
        lengths=[5, 8, 13, 20, 32 + 1, 32 + 9, 32 + 12, 4 * 32 + 4, 4 * 32 + 13, 4 * 32 + 18],
    ),
    "c24_s5_g3_b6": dict(
        config=dict(chunk_size=24, temp_beacon_stride=5, temp_mem_budget=6, n_global=3),
        seed=2,
        lengths=[3, 5, 7, 11, 24 + 1, 24 + 3, 24 + 10, 4 * 24 + 1, 4 * 24 + 6, 4 * 24 + 12],
    ),
}
VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER = 320, 32, 2, 4, 2, 8, 64


def import_official(root: Path):
    """Import the official modules without running `talos/__init__.py` (it pulls in the
    training stack) and with a stand-in for the fused CUDA loss, which generation never calls."""
    sys.path.insert(0, str(root))
    pkg = types.ModuleType("talos")
    pkg.__path__ = [str(root / "talos")]
    sys.modules["talos"] = pkg
    ops = types.ModuleType("talos.ops")
    ops.__path__ = [str(root / "talos" / "ops")]
    sys.modules["talos.ops"] = ops
    lce = types.ModuleType("talos.ops.linear_cross_entropy")

    def chunked_linear_cross_entropy(*a, **k):
        raise NotImplementedError("training loss: not used by generation")

    lce.chunked_linear_cross_entropy = chunked_linear_cross_entropy
    sys.modules["talos.ops.linear_cross_entropy"] = lce
    from talos.task.comet.data.generation_preprocess import GenBatchCollator, Gentransform
    from talos.task.comet.modeling_qwen3 import MemQwen3Config, MemQwen3ForCausalLM
    return MemQwen3Config, MemQwen3ForCausalLM, Gentransform, GenBatchCollator


def build_checkpoint(official, name: str, spec: dict, out: Path):
    import torch

    MemQwen3Config, MemQwen3ForCausalLM = official[:2]
    c = spec["config"]
    g = c["n_global"]
    ph = VOCAB - 2 - g
    config = MemQwen3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=None, eos_token_id=None, torch_dtype="float32",
        chunk_size=c["chunk_size"], placeholder_id=ph, temp_beacon_id=ph + 1,
        temp_beacon_stride=c["temp_beacon_stride"], temp_mem_budget=c["temp_mem_budget"],
        global_beacon_ids=list(range(ph + 2, ph + 2 + g)))
    model = MemQwen3ForCausalLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1:  # norm scales around 1
                p.copy_(1.0 + 0.2 * noise)
            elif "embed_tokens" in pname:
                p.copy_(noise)
            else:  # (out, in) weights scaled by fan-in, so activations stay O(1) and logits vary
                p.copy_(noise * (1.5 / p.shape[1] ** 0.5))
        # the CoMeT rows of the head smaller, so greedy continuations rarely pick a CoMeT id
        model.lm_head.weight[config.placeholder_id:] *= 0.25
    path = out / name
    model.save_pretrained(path, safe_serialization=True)
    # reload exactly as a user would, then generate from the reloaded model
    return MemQwen3ForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa").eval()


def special_ids(config) -> set[int]:
    return {config.placeholder_id, config.temp_beacon_id, *config.global_beacon_ids}


def generate_one(official, model, prompt: list[int]) -> dict:
    import torch

    Gentransform, GenBatchCollator = official[2:]
    cfg = model.config
    transform = Gentransform.from_config(cfg, tokenizer=None, max_input_len=10**6, is_pre_tokenized=True)
    uid, batch = GenBatchCollator()([transform(("p", prompt))])
    n_in = batch["input_ids"].shape[1]
    start_counter = int(batch["last_chunk_text_length"])

    fed = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        pos = kwargs.get("position_ids")
        fed.append((ids[0].tolist(), pos[0].tolist()))

    forced = []
    inner_update = model._update_model_kwargs_for_generation

    def update(outputs, model_kwargs, *a, **k):
        forced.append(bool(model_kwargs.get("need_insert_beacon", False)))
        return inner_update(outputs, model_kwargs, *a, **k)

    handle = model.model.register_forward_pre_hook(hook, with_kwargs=True)
    model._update_model_kwargs_for_generation = update
    try:
        with torch.no_grad():
            res = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1,
                                 return_dict_in_generate=True, output_logits=True, pad_token_id=cfg.pad_token_id,
                                 eos_token_id=None)
    finally:
        handle.remove()
        del model._update_model_kwargs_for_generation
    output = res.sequences[0, n_in:].tolist()
    assert len(output) == MAX_NEW and len(forced) == MAX_NEW, (len(output), len(forced))
    margins, text = [], []
    special = special_ids(cfg)
    cut = False
    for tok, f, logits in zip(output, forced, res.logits):
        if f:
            assert tok == cfg.temp_beacon_id
            continue
        top = torch.topk(logits[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
        if tok in special:
            cut = True
        if not cut:
            text.append(tok)
    prompt_ids, prompt_pos = fed[0]
    assert prompt_ids == batch["input_ids"][0].tolist()
    return {
        "prompt": prompt,
        "chunk_sizes": list(batch["chunk_sizes"]),
        "last_chunk_text_length": start_counter,
        "output": output,
        "forced": forced,
        "text": text,
        "fed": [{"tokens": ids, "positions": pos} for ids, pos in fed[1:]],
        "prompt_fed": {"tokens": prompt_ids, "positions": prompt_pos},
        "margins": margins,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-root", required=True, type=Path, help="directory holding the official `talos` package")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/fixtures/official_generation")
    args = ap.parse_args(argv)
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    official = import_official(args.official_root.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in CHECKPOINTS.items():
        model = build_checkpoint(official, name, spec, args.out)
        cfg = model.config
        rng = np.random.default_rng(spec["seed"])
        cases = []
        for n in spec["lengths"]:
            prompt = rng.integers(0, cfg.placeholder_id, n).tolist()
            cases.append(generate_one(official, model, prompt))
        record = {"max_new_tokens": MAX_NEW, "torch": torch.__version__, "transformers": transformers.__version__,
                  "cases": cases}
        (args.out / name / "expected.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")
        for c in cases:
            print(name, len(c["prompt"]), "L0", c["last_chunk_text_length"], "text", len(c["text"]),
                  "forced at", [i for i, f in enumerate(c["forced"]) if f], "min margin",
                  round(min(c["margins"]), 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
