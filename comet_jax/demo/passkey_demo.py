"""comet-demo [--out DIR] [--work DIR] [--samples 50] [--seed 0] [--quick]

The passkey demo in one command, on CPU: train three small models from scratch with the
same budget (configs/demo_passkey.yaml, shipped with the package) and evaluate each with
`comet-passkey` at 1x, 4x, 16x and 32x the training length (the target's range; add 128 to
--multipliers for 128x, ~13 min more here), 5 needle depths:

  comet   CoMeT with its memory (global memory + temp memory)
  full    the same backbone trained and evaluated with full attention (no chunks)
  nomem   CoMeT chunks with the memory switched off (G = 0, stride = -1)

The models train and evaluate side by side, --jobs at a time (default: one per CPU core, at
most 3), each process pinned to its own share of the cores: on a 2-core CPU two
single-core processes get ~1.3x the work done of one process using both cores. Child output
is prefixed with the model's name. A model that starts when no other is waiting for a core
group gets every core (it shares them with the models still running, then has them alone).

CoMeT is also evaluated on a held-out prompt (`comet-passkey --prompt-variant held_out`: filler
sentences and a question wording no training example has) at --held-out-mults (default 1x, 4x
and 32x: the target's range at a fifth of the cost of every length). A cell is scored twice: "exact"
(the first number generated is the key: its digits, then no digit) and "starts with" (the first
number starts with the key's digits); the table prints exact (starts with).

Full attention costs O(length^2): it is evaluated up to --full-max-mult x the training length
(default 4x: at 16x one prompt costs ~10 s here, 100 prompts a cell) and reported as not run
beyond. Writes to --out: results.json, heatmap_{model}.png,
accuracy_vs_length.png, train_loss.png (results.json keeps the rows of other models an earlier
demo with the same settings wrote there). Training runs and raw eval outputs go to --work.
Run in the root of a comet-jax checkout these default to docs/demo and runs/demo (the
committed artefacts), anywhere else to comet_demo and comet_demo/runs. Any training key can
be changed for all three models with --set section.key=value. The models train and evaluate
in child processes (`python -m comet_jax.train.cli`, `python -m comet_jax.evals.passkey`)
of the same Python.

Runs of other settings are kept apart: the default demo trains into WORK/{model}; one with
another --seed, --quick, --config or --set into WORK/{model}-{tag} (tag: seed{N}, quick and/or
a short hash of the config), and its --out defaults to DEFAULT_OUT/{tag}. A finished run is
reused when its config is the same; one trained with another config is refused (exit 2,
before any work): only --retrain deletes a run, and only the run this command would train.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from comet_jax.bundled import checkout, config_path
from comet_jax.demo.model_card import ship_model
from comet_jax.demo.report import LABELS, plot, summary_table
from comet_jax.evals.common import hold_out_dir

MODELS = {
    "comet": [],
    "full": ["comet.mode=full"],
    "nomem": ["comet.global_size=0", "comet.stride=-1"],
}
DEPTHS = "0,0.25,0.5,0.75,1"
DEFAULT_CONFIG = "demo_passkey.yaml"
TRAIN_TIME = "demo_train_seconds.json"  # in a run the demo trained: its training time, for when it is reused


def in_checkout_root() -> bool:
    """Whether the current directory is the root of a comet-jax checkout (where the demo's
    committed artefacts live)."""
    return Path("docs/demo").is_dir() and Path("configs", DEFAULT_CONFIG).is_file()


def default_dirs() -> tuple[str, str]:
    """(--out, --work) when not given."""
    return ("docs/demo", "runs/demo") if in_checkout_root() else ("comet_demo", "comet_demo/runs")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comet-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help=f"training config of all three models (default: the bundled {DEFAULT_CONFIG}, "
                                     f"configs/{DEFAULT_CONFIG} of the repository)")
    ap.add_argument("--out", help="artefacts directory (default: docs/demo in the root of a comet-jax checkout, "
                                  "else comet_demo)")
    ap.add_argument("--work", help="training runs and raw eval outputs (default: runs/demo in the root of a "
                                   "comet-jax checkout, else comet_demo/runs)")
    ap.add_argument("--samples", type=int, default=50, help="prompts per (length, depth) cell (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every model (run.seed; default 0)")
    ap.add_argument("--seeds", metavar="0,1,2,3",
                    help="one demo per seed, several side by side, then the min / mean over seeds of every cell "
                         "(OUT/seeds.json; comet_jax/demo/seeds.py)")
    ap.add_argument("--multipliers", default="1,4,16,32",
                    help="eval lengths as multiples of the training length (default 1,4,16,32)")
    ap.add_argument("--held-out-mults", default="1,4,32",
                    help="lengths (multiples of the training length) of CoMeT's held-out-prompt "
                         "evaluation (default 1,4,32; empty: none)")
    ap.add_argument("--depths", default=DEPTHS, help=f"needle depths (default {DEPTHS})")
    ap.add_argument("--full-max-mult", type=float, default=4,
                    help="evaluate full attention only up to this multiple of the training length (default 4)")
    ap.add_argument("--models", default="comet,full,nomem", help="which models (default comet,full,nomem)")
    ap.add_argument("--set", action="append", default=[], metavar="section.key=value",
                    help="training override for every model (repeatable)")
    ap.add_argument("--jobs", type=int, default=0,
                    help="models trained at once, each pinned to its share of the CPU cores "
                         "(default 0: one per core, at most 3; 1: one after another)")
    ap.add_argument("--retrain", action="store_true", help="train again even if a finished run exists in --work")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: a tiny model, 4 steps, 2 samples, lengths 1x and 2x, depths 0 and 1")
    return ap


_print_lock = threading.Lock()
# Child processes running now, and whether a failed job stopped them; one lock for both so
# that no child starts after the others were stopped.
_procs_lock = threading.Lock()
_live: set = set()
_aborted = False


def log(msg: str, tag: str = "demo") -> None:
    with _print_lock:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        return list(range(os.cpu_count() or 1))


def stop_children() -> bool:
    """Stop every running child and refuse new ones; False if that was already done."""
    global _aborted
    with _procs_lock:
        if _aborted:
            return False
        _aborted = True
        for proc in _live:
            proc.terminate()
        return True


def core_groups(jobs: int) -> list[list[int]]:
    """The available cores split into `jobs` contiguous groups (some may share a core when
    there are fewer cores than jobs)."""
    cores = available_cores()
    if jobs >= len(cores):
        return [[cores[i % len(cores)]] for i in range(jobs)]
    return [cores[len(cores) * k // jobs: len(cores) * (k + 1) // jobs] for k in range(jobs)]


def run(cmd: list[str], tag: str = "demo", cores: list[int] | None = None) -> None:
    """Run a child python process, its output prefixed with `tag`, pinned to `cores`; raise
    on failure."""
    log("$ python " + " ".join(cmd), tag)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if checkout() is not None:  # run from a checkout, not installed: the children import the same code
        env["PYTHONPATH"] = os.pathsep.join([str(checkout()), env.get("PYTHONPATH", "")])
    pin = None
    if cores is not None and hasattr(os, "sched_setaffinity"):
        pin = lambda: os.sched_setaffinity(0, cores)  # noqa: E731
    with _procs_lock:
        if _aborted:
            raise RuntimeError(f"{tag}: not started, another model failed")
        proc = subprocess.Popen([sys.executable, *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=pin)
        _live.add(proc)
    # tqdm redraws with \r: split on it too so a progress bar shows up line by line
    for line in io.TextIOWrapper(proc.stdout, errors="replace", newline=""):
        for part in line.replace("\r", "\n").splitlines():
            if part.strip():
                with _print_lock:
                    print(f"[{tag}] {part}", file=sys.stderr, flush=True)
    with _procs_lock:
        _live.discard(proc)
    if proc.wait() != 0:
        raise RuntimeError(f"{tag}: command failed with exit code {proc.returncode}: python {' '.join(cmd)}")


def run_tag(args, default_config: str) -> str:
    """'' for the default demo (seed 0, the bundled config, no --set, not --quick); else what
    differs: 'quick', 'seed{N}' and/or a short hash of the resolved config, joined by '-'.
    Its runs go to WORK/{model}-{tag}, so they never meet the default demo's."""
    import hashlib

    from comet_jax.train.train_config import dump_yaml, load_config

    parts = ["quick"] if args.quick else []
    if args.seed != 0:
        parts.append(f"seed{args.seed}")
    mine = dump_yaml(load_config(args.config, list(args.set)))
    if mine != dump_yaml(load_config(default_config, [])):
        parts.append(hashlib.sha256(mine.encode()).hexdigest()[:8])
    return "-".join(parts)


def run_name(name: str, tag: str) -> str:
    return f"{name}-{tag}" if tag else name


def overrides_of(name: str, args, sets, work: Path, tag: str) -> list[str]:
    run_dir = work / run_name(name, tag)
    return [f"run.dir={run_dir}", f"run.name=demo_{name}", f"run.seed={args.seed}", *sets, *MODELS[name]]


def finished_run(run_dir: Path) -> bool:
    return (run_dir / "model" / "comet_jax.json").is_file()


def train_and_eval(name: str, cores, args, sets, seq_len, samples, depths, mults, work: Path,
                   held_mults: list[float] = (), tag: str = "") -> dict:
    """Train one model (unless a finished run is reused) and evaluate it; its results record."""
    run_dir = work / run_name(name, tag)
    if args.retrain:
        shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    overrides = overrides_of(name, args, sets, work, tag)
    finished = finished_run(run_dir)  # with another config, main refused it before any work
    if not finished:
        log(f"training {name} ({LABELS[name]})" + (f" on cores {cores}" if cores else " on every core"), name)
        run(["-m", "comet_jax.train.cli", "--config", args.config, *overrides], name, cores)
        train_s = time.time() - t0
        (run_dir / TRAIN_TIME).write_text(json.dumps({"train_seconds": round(train_s, 1)}))
    else:
        log(f"reusing the finished run in {run_dir} (same config; --retrain to redo)", name)
        train_s = recorded_train_seconds(run_dir)
    limit = args.full_max_mult if name == "full" else float("inf")
    lengths = [int(round(m * seq_len)) for m in mults if m <= limit]
    skipped = [int(round(m * seq_len)) for m in mults if m > limit]
    t1 = time.time()
    log(f"evaluating at {lengths}" + (f" (not run: {skipped}, full attention is quadratic)" if skipped else ""),
        name)
    held = [int(round(m * seq_len)) for m in held_mults]
    variants = {"train": lengths} | ({"held_out": held} if name == "comet" and held else {})
    evals = {variant: work / (f"passkey_{run_name(name, tag)}" + ("" if variant == "train" else f"_{variant}"))
             for variant in variants}
    for variant, at in variants.items():
        out = evals[variant]
        # a fresh evaluation every time (comet-passkey refuses to overwrite the results of an earlier
        # one): the files an earlier demo of this run wrote there go, nothing else
        for stale in ("results.json", "heatmap.png"):
            (out / stale).unlink(missing_ok=True)
        run(["-m", "comet_jax.evals.passkey", "--checkpoint", str(run_dir / "model"),
             "--lengths", ",".join(map(str, at)), "--depths", depths, "--samples", str(samples),
             "--batch-size", str(min(samples, 25)), "--mode", "full" if name == "full" else "comet",
             "--prompt-variant", variant, "--out", str(out)],
            name, cores)
    res = json.loads((evals["train"] / "results.json").read_text())
    if "held_out" in variants:
        held_res = json.loads((evals["held_out"] / "results.json").read_text())
        res["held_out"] = {k: held_res[k] for k in ("accuracy_by_length", "exact_by_length", "cells")}
    steps, losses = loss_curve(run_dir)
    res.update(train_seconds=round(train_s, 1), eval_seconds=round(time.time() - t1, 1), cores=cores,
               not_run_lengths=skipped, train_loss={"steps": steps, "loss": losses},
               final_train_loss=losses[-1] if losses else None)
    log(f"done: trained in {train_s / 60:.1f} min, evaluated in {(time.time() - t1) / 60:.1f} min, "
        f"accuracy by length {res['accuracy_by_length']}", name)
    return res


def kept_results(out: Path, results: dict, models: list[str], args, sets, depths: list[float], work: Path,
                 tag: str) -> dict:
    """The rows of an earlier results.json in `out` for models this command does not run, when
    that file was written with the same settings (seed, config, samples, lengths, depths) and each
    such model's run in --work is still the finished run of this config: `comet-demo --models
    comet` after `comet-demo` keeps the baselines' rows (and, as their files are not touched,
    their heatmaps) instead of dropping them."""
    try:
        old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    same = ("config", "overrides", "seed", "train_seq_len", "samples", "multipliers", "held_out_multipliers")
    if not isinstance(old, dict) or any(old.get(k) != results[k] for k in same):
        return {}
    kept = {}
    for name, res in (old.get("models") or {}).items():
        run_dir = work / run_name(name, tag)
        if (name in MODELS and name not in models and res.get("depths") == depths and finished_run(run_dir)
                and same_config(run_dir, args.config, overrides_of(name, args, sets, work, tag))):
            kept[name] = res
    return kept


def same_config(run_dir: Path, config: str, overrides: list[str]) -> bool:
    """Whether the run in run_dir was trained with exactly this config (its resolved config.yaml)."""
    from comet_jax.train.train_config import dump_yaml, load_config

    saved = run_dir / "config.yaml"
    return saved.is_file() and saved.read_text() == dump_yaml(load_config(config, overrides))


def train_seq_len(config: str, overrides: list[str]) -> int:
    from comet_jax.train.train_config import load_config

    return int(load_config(config, overrides).data.seq_len)


def recorded_train_seconds(run_dir: Path) -> float:
    """How long a reused run took to train: what the demo that trained it wrote, else (a run
    trained by hand, or before the demo wrote it) the sum of its step times (compile included,
    start-up and checkpoint writes not)."""
    path = run_dir / TRAIN_TIME
    if path.is_file():
        return float(json.loads(path.read_text())["train_seconds"])
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return 0.0
    return sum(json.loads(line).get("step_time", 0.0) for line in metrics.read_text().splitlines() if line)


def loss_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            steps.append(rec["step"])
            losses.append(rec["loss"])
    return steps, losses


def positive_numbers(ap, flag: str, text: str) -> list[float]:
    """A comma-separated list of positive numbers (possibly empty), or exit 2 naming `flag`."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ap.error(f"{flag}: comma-separated numbers, got {text!r}")
    if values and min(values) <= 0:
        ap.error(f"{flag} must be positive")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.seeds:
        ap.error("--seeds runs several demos: use comet-demo or python -m eval.demo (comet_jax/demo/cli.py)")
    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models: choose from {','.join(MODELS)}")
    mults = positive_numbers(ap, "--multipliers", args.multipliers)
    if not mults or args.samples < 1:
        ap.error("--multipliers must be positive and --samples >= 1")
    held_mults = positive_numbers(ap, "--held-out-mults", args.held_out_mults)
    if args.jobs < 0:
        ap.error("--jobs must be >= 0 (0: one per CPU core)")
    sets = list(args.set)
    samples, depths = args.samples, args.depths
    if args.quick:
        sets = ["train.steps=4", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
                "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16", "data.seq_len=128",
                "data.curriculum=[]", "train.log_every=2", "checkpoint.every=100"] + sets
        samples, depths, mults = 2, "0,1", [1, 2]
        held_mults = mults

    from comet_jax.config import ConfigError

    given_config = args.config
    try:
        args.config = args.config or str(config_path(DEFAULT_CONFIG))
        seq_len = train_seq_len(args.config, sets)
        tag = run_tag(args, str(config_path(DEFAULT_CONFIG)))
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    default_out, default_work = default_dirs()
    work = Path(args.work or default_work)
    out = Path(args.out) if args.out else Path(default_out) / tag if tag else Path(default_out)
    if not args.retrain:  # only --retrain deletes a run, and only the one this command trains
        for name in models:
            run_dir = work / run_name(name, tag)
            overrides = overrides_of(name, args, sets, work, tag)
            if finished_run(run_dir) and not same_config(run_dir, args.config, overrides):
                print(f"error: {run_dir} holds a finished run trained with another config (see its config.yaml): "
                      "pass --retrain to delete it and train again, or give another --work", file=sys.stderr)
                return 2
    if tag:
        log(f"runs of these settings: {work}/{{model}}-{tag}")
    return hold_out_dir(out, lambda: run_models(args, models, sets, seq_len, samples, depths, mults, held_mults,
                                                work, out, tag, given_config), "comet-demo")


def run_models(args, models, sets, seq_len, samples, depths, mults, held_mults, work: Path, out: Path, tag: str,
               given_config: str | None) -> int:
    """The work of main, holding --out: train and evaluate every model, write the artefacts."""
    from comet_jax.evals.passkey import parse_depth, parse_list, write_heatmap, write_json

    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results: dict = {"config": given_config or f"configs/{DEFAULT_CONFIG}", "overrides": sets, "seed": args.seed,
                     "train_seq_len": seq_len, "samples": samples,
                     "multipliers": mults, "held_out_multipliers": held_mults, "models": {}}
    jobs = args.jobs or min(len(available_cores()), 3)
    jobs = max(1, min(jobs, len(models)))
    groups = core_groups(jobs) if jobs > 1 else [None]  # one job alone keeps every core
    free: queue.Queue = queue.Queue()
    for group in groups:
        free.put(group)
    log(f"{len(models)} models, {jobs} at a time" + (f", cores {groups}" if jobs > 1 else ""))

    first_error: list[RuntimeError] = []
    waiting = list(models)
    waiting_lock = threading.Lock()

    def one_model(name: str) -> dict:
        cores = free.get()
        with waiting_lock:
            waiting.remove(name)
            last = not waiting
        try:
            # the last model to start takes every core: once the others finish, none idles
            use = None if last and jobs > 1 and len(models) > jobs else cores
            return train_and_eval(name, use, args, sets, seq_len, samples, depths, mults, work, held_mults, tag)
        except RuntimeError as e:
            if stop_children():
                log(f"error: {e}; stopping the other models", name)
                first_error.append(e)
            raise
        finally:
            free.put(cores)

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(one_model, models))  # first error re-raised here, in model order
    except RuntimeError as e:
        print(f"error: {(first_error or [e])[0]}", file=sys.stderr)
        return 1
    # the depths as comet-passkey parses and records them
    kept = kept_results(out, results, models, args, sets, parse_list(depths, parse_depth, "depths"), work, tag)
    if kept:
        log(f"kept from {out / 'results.json'} (same settings, same runs): {', '.join(kept)}")
        results["kept_from_earlier"] = sorted(kept)
    ran = dict(zip(models, done))
    results["models"] = {name: ran[name] if name in ran else kept[name] for name in MODELS
                         if name in ran or name in kept}

    results["wall_seconds"] = round(time.time() - t_start, 1)
    out.mkdir(parents=True, exist_ok=True)
    for name, res in results["models"].items():
        if name in kept:
            continue
        write_heatmap({**res, "title": f"passkey accuracy: {LABELS[name]} (trained on {seq_len} tokens)"},
                      out / f"heatmap_{name}.png")
    plot(results, out)
    write_json(results, out / "results.json")
    if "comet" in results["models"]:  # the trained model beside its numbers: query it without training
        command = " ".join(["comet-demo", *(["--config", given_config] if given_config else []), "--seed", str(args.seed),
                            *(["--quick"] if args.quick else []), *(f"--set {s}" for s in args.set)])
        shipped = ship_model(work / run_name("comet", tag), out, results, command, str(out / "model"))
        log(f"the CoMeT model and its card: {shipped}")
    log(f"done in {results['wall_seconds']:.0f}s; wrote {out}")
    print(summary_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
