"""comet-quickstart [--out DIR]

The CPU demo, no downloads: build a small random Llama, save it as a Hugging Face
directory, convert it with `comet-convert` (python -m comet_jax.convert), and score a JSONL
file with `comet-loss` (python -m comet_jax.evals.loss) in full mode and in comet mode (chunks
of 64 with memory). Every step is the real command-line entry point a user runs on a
downloaded model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="comet-quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quickstart", help="work directory, replaced (default runs/quickstart)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    from comet_jax.config import CometConfig, ModelConfig
    from comet_jax.convert.__main__ import main as convert_main
    from comet_jax.export.write import export_hf
    from comet_jax.model.init import init_params
    from comet_jax.evals.loss import main as loss_main

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
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
