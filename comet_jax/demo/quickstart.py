"""comet-quickstart [--out DIR]

The CPU demo, no downloads: build a small random Llama, save it as a Hugging Face
directory, convert it with `comet-convert` (python -m comet_jax.convert), and score a JSONL
file with `comet-loss` (python -m comet_jax.evals.loss) in full mode and in comet mode (chunks
of 64 with memory). Every step is the real command-line entry point a user runs on a
downloaded model.

--out (default runs/quickstart) is a new or empty directory, or the output of an earlier
quickstart (it holds a .comet-quickstart marker): then what that run wrote is replaced and
anything else in the directory is kept. Any other non-empty directory is refused (exit 2,
nothing touched). One command at a time per --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

MARKER = ".comet-quickstart"
# everything a quickstart writes into --out: the one set of names a later quickstart replaces
OUTPUTS = ("hf_llama", "checkpoint", "data.jsonl", MARKER)


def claim_out(out: Path) -> None:
    """Make `out` ready for a quickstart: a missing or empty directory is used as it is; the
    output of an earlier quickstart (it has MARKER, or holds exactly what a quickstart of before
    the marker wrote) loses what that run wrote (OUTPUTS) and keeps anything else; any other
    non-empty directory is refused (ValueError, one line), untouched."""
    entries = {p.name for p in out.iterdir() if p.name != ".lock"} if out.is_dir() else set()
    if entries:
        earlier = (out / MARKER).is_file() or entries == set(OUTPUTS[:-1])  # or one of before the marker
        if not earlier:
            raise ValueError(f"--out {out} is not empty and not the output of an earlier comet-quickstart (no "
                             f"{MARKER} in it): choose a new or empty directory")
        for name in OUTPUTS:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by comet-quickstart: a later quickstart with this --out replaces "
                              f"{', '.join(OUTPUTS[:-1])}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="comet-quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quickstart",
                    help="work directory: new, empty, or an earlier quickstart's, whose outputs are replaced "
                         "(default runs/quickstart)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from comet_jax.evals.common import hold_out_dir

    return hold_out_dir(args.out, lambda: _main(args), "comet-quickstart")


def _main(args) -> int:
    out = Path(args.out)
    try:
        claim_out(out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax
    import numpy as np

    from comet_jax.config import CometConfig, ModelConfig
    from comet_jax.convert.__main__ import main as convert_main
    from comet_jax.export.write import export_hf
    from comet_jax.model.init import init_params
    from comet_jax.evals.loss import main as loss_main

    t0 = time.time()
    model = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=32)
    params = init_params(model, CometConfig(), jax.random.key(args.seed))
    export_hf(params, model, CometConfig(), out / "hf_llama")
    print(f"[1/3] wrote a random Llama ({model.num_layers} layers, hidden {model.hidden_size}) as an HF "
          f"directory: {out / 'hf_llama'}", flush=True)

    cmd = [str(out / "hf_llama"), str(out / "checkpoint"), "--chunk-size", "64", "--global-size", "8",
           "--stride", "8", "--budget", "16", "--quiet"]
    print(f"[2/3] python -m comet_jax.convert {' '.join(cmd)}", flush=True)
    if convert_main(cmd) != 0:
        return 1

    rng = np.random.default_rng(args.seed)
    data = out / "data.jsonl"
    with data.open("w") as f:
        for n in (300, 128, 77, 512):
            f.write(json.dumps({"input_ids": rng.integers(0, model.vocab_size, n).tolist()}) + "\n")
    for mode in ("full", "comet"):
        cmd = ["--checkpoint", str(out / "checkpoint"), "--data", str(data), "--mode", mode]
        print(f"[3/3] python -m comet_jax.evals.loss {' '.join(cmd)}", flush=True)
        if loss_main(cmd) != 0:
            return 1
    print(f"quickstart done in {time.time() - t0:.0f}s (an untrained model scores about "
          f"ln({model.vocab_size}) = {np.log(model.vocab_size):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
