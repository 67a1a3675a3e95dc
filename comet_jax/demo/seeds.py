"""`comet-demo --seeds 0,1,2,3 [demo options]`: the demo once per training seed, several seeds
side by side (each a `comet-demo --seed N --jobs 1` child pinned to its own share of the CPU
cores, its models one after another), then the spread over seeds: per model and length the
min and the mean over seeds of exact match, printed as a table and written to OUT/seeds.json.

Each seed's run is exactly `comet-demo --seed N` with the same options: its training runs,
results and figures go where that command puts them (seed 0 of the default demo: docs/demo;
seed N: docs/demo/seed{N}; with --out DIR: DIR/seed{N}), so a finished seed is reused and
any one seed can be redone alone. OUT is --out, else the demo's default artefacts directory
(docs/demo in a checkout)."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from comet_jax.demo import passkey_demo as demo


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds: distinct non-negative integers, got {text!r}")
    return seeds


def child_argv(argv: list[str], seed: int, out: Path | None) -> list[str]:
    """The forwarded demo options without --seeds/--seed/--jobs/--out, plus this seed's."""
    rest, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--seeds", "--seed", "--jobs", "--out"):
            skip = "=" not in a
            continue
        rest.append(a)
    return rest + ["--seed", str(seed), "--jobs", "1"] + (["--out", str(out / f"seed{seed}")] if out else [])


def seed_out(argv: list[str], seed: int, out: Path | None) -> Path:
    """Where `comet-demo` with these options and this seed writes its results.json."""
    if out is not None:
        return out / f"seed{seed}"
    args = demo.build_parser().parse_args(child_argv(argv, seed, None))
    args.config = args.config or str(demo.config_path(demo.DEFAULT_CONFIG))
    tag = demo.run_tag(args, str(demo.config_path(demo.DEFAULT_CONFIG)))
    default_out, _ = demo.default_dirs()
    return Path(default_out) / tag if tag else Path(default_out)


def rows_of(results: dict) -> dict[str, dict[int, float]]:
    """{row label: {length: exact match}} of one seed's results.json."""
    rows = {}
    for name, r in results["models"].items():
        label = demo.LABELS.get(name, name)
        rows[label] = {int(n): v for n, v in r["exact_by_length"].items()}
        if "held_out" in r:
            rows[label + ", held-out prompt"] = {int(n): v for n, v in r["held_out"]["exact_by_length"].items()}
    return rows


def spread(per_seed: dict[int, dict]) -> dict[str, dict[int, dict[str, float]]]:
    """{row: {length: {"min", "mean", "seeds"}}} over the seeds that have that cell."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for results in per_seed.values():
        for row, cells in rows_of(results).items():
            for n, v in cells.items():
                out.setdefault(row, {}).setdefault(n, []).append(v)
    return {row: {n: {"min": min(v), "mean": sum(v) / len(v), "seeds": len(v)} for n, v in sorted(cells.items())}
            for row, cells in out.items()}


def spread_table(summary: dict, seq_len: int) -> str:
    lengths = sorted({n for cells in summary.values() for n in cells})
    rows = ["| model (min / mean over seeds) | " + " | ".join(f"{n} ({n / seq_len:g}x)" for n in lengths) + " |",
            "|" + " --- |" * (len(lengths) + 1)]
    for row, cells in summary.items():
        rows.append(f"| {row} | " + " | ".join(f"{cells[n]['min']:.2f} / {cells[n]['mean']:.2f}" if n in cells
                                                else "not run" for n in lengths) + " |")
    return "\n".join(rows)


def main(argv: list[str], seeds_text: str, out_text: str | None) -> int:
    from comet_jax.evals.passkey import write_json

    try:
        seeds = parse_seeds(seeds_text)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(out_text) if out_text else None
    summary_dir = out or Path(demo.default_dirs()[0])
    cores = demo.available_cores()
    jobs = max(1, min(len(seeds), len(cores)))
    groups = demo.core_groups(jobs)
    free = list(groups)
    lock = threading.Lock()
    demo.log(f"seeds {seeds}, {jobs} at a time" + (f", cores {groups}" if jobs > 1 else ""))
    t0 = time.time()

    def one(seed: int) -> None:
        with lock:
            group = free.pop()
        try:
            demo.run(["-m", "comet_jax.demo.passkey_demo", *child_argv(argv, seed, out)], f"seed {seed}",
                     group if jobs > 1 else None)
        finally:
            with lock:
                free.append(group)

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, seeds))
    except RuntimeError as e:
        demo.stop_children()
        print(f"error: {e}", file=sys.stderr)
        return 1
    per_seed = {s: json.loads((seed_out(argv, s, out) / "results.json").read_text()) for s in seeds}
    seq_len = next(iter(per_seed.values()))["train_seq_len"]
    summary = spread(per_seed)
    record = {"seeds": seeds, "train_seq_len": seq_len, "wall_seconds": round(time.time() - t0, 1),
              "results": {str(s): str(seed_out(argv, s, out) / "results.json") for s in seeds},
              "per_seed": {str(s): {row: {str(n): v for n, v in cells.items()} for row, cells in rows_of(r).items()}
                           for s, r in per_seed.items()},
              "spread": {row: {str(n): v for n, v in cells.items()} for row, cells in summary.items()}}
    summary_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, summary_dir / "seeds.json")
    demo.log(f"done in {record['wall_seconds']:.0f}s; wrote {summary_dir / 'seeds.json'}")
    print(spread_table(summary, seq_len))
    return 0
