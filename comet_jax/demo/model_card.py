"""The demo's trained CoMeT model as an artefact: OUT/model is a copy of the run's inference
checkpoint (RUN_DIR/model: params, tokenizer.json, comet_jax.json; ~1 MB) with a README.md card
saying how it was trained and what it scored, so that anyone can query it with comet-passkey
without training. For the default demo OUT is docs/demo: the shipped model (docs/demo/model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from comet_jax.evals.common import format_length

CARD = "README.md"


def _row(label: str, r: dict, lengths: list[int]) -> str:
    exact = {int(k): v for k, v in r.get("exact_by_length", {}).items()}
    acc = {int(k): v for k, v in r["accuracy_by_length"].items()}
    return f"| {label} | " + " | ".join(f"{exact[n]:.2f} ({acc[n]:.2f})" if n in acc else "not run"
                                       for n in lengths) + " |"


def card_text(results: dict, command: str, model_dir_hint: str, meta: dict, batch: int) -> str:
    """The card of the CoMeT model of one demo run (its results.json, the model's comet_jax.json)."""
    r = results["models"]["comet"]
    seq = results["train_seq_len"]
    lengths = sorted({int(n) for n in r["accuracy_by_length"]} | {int(n) for n in r.get("held_out", {})
                                                                   .get("accuracy_by_length", {})})
    head = "| prompt | " + " | ".join(f"{format_length(n)} ({n / seq:g}x)" for n in lengths) + " |"
    table = [head, "|" + " --- |" * (len(lengths) + 1), _row("as in training", r, lengths)]
    if "held_out" in r:
        table.append(_row("held-out wording", r["held_out"], lengths))
    m, c = meta["model"], meta["comet"]
    cores = r.get("cores")
    where = f" on {len(cores)} CPU core{'s' if len(cores) > 1 else ''}" if cores else ""
    minutes = r.get("train_seconds", 0) / 60
    return "\n".join([
        f"# The passkey demo's CoMeT model (seed {results['seed']})",
        "",
        f"A small CoMeT (hidden {m['hidden_size']}, {m['num_layers']} layers, chunks of {c['chunk_size']} tokens, "
        f"{c['global_size']} global memory slots, a temp memory of {c['budget']} beacons) trained from scratch on "
        f"the synthetic passkey task by `{command}` (config `{results['config']}`): "
        f"{meta['train']['steps']} steps of {batch} sequences of at most {seq} tokens, {minutes:.1f} min of "
        f"training{where}.",
        "",
        "Ask it for keys at 1x and 32x its training length (about a minute on a 2-core CPU):",
        "",
        "```bash",
        f"python -m eval.passkey --checkpoint {model_dir_hint} --lengths {seq},{32 * seq} --samples 10 "
        f"--out runs/demo_model --resume",
        "```",
        "",
        "(`comet-passkey` when installed; `--resume` makes the command safe to repeat.) What it scored "
        f"in its demo run: exact match (starts with), mean over {len(r['depths'])} needle depths, "
        f"{results['samples']} prompts per cell:",
        "",
        *table,
        "",
        "Files: `params/` (Orbax), `tokenizer.json` (the word-level passkey tokenizer), `comet_jax.json` "
        "(model and memory config). The recipe and what limits it: docs/guide/demo.md, "
        "docs/demo/EXPERIMENTS.md.",
        "",
    ])


def ship_model(run_dir: Path, out: Path, results: dict, command: str, model_dir_hint: str) -> Path:
    """Copy RUN_DIR/model to OUT/model with its card, replacing an older copy only once the new
    one is complete (built in OUT/model.tmp, then renamed)."""
    src, dest = run_dir / "model", out / "model"
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    meta = json.loads((src / "comet_jax.json").read_text())
    batch = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["batch_size"]
    (tmp / CARD).write_text(card_text(results, command, model_dir_hint, meta, batch))
    old = out / "model.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
