"""comet-convert (or python -m comet_jax.convert) SRC_DIR DST_DIR [options]

Convert a local Hugging Face Llama / Qwen3 directory (or an official CoMeT checkpoint)
into a comet-jax checkpoint (Orbax parameters + configs + tokenizer).

The parameters are streamed block by block: host memory does not grow with the model
(about 0.3 GB for a 0.4B model, 0.8 GB for Llama-3-8B, 2.5 GB for Llama-3-70B). A run
stopped with SIGTERM or Ctrl-C leaves nothing behind; what a killed one leaves is removed
by the next run for the same DST_DIR.
"""

from __future__ import annotations

import argparse
import json
import sys

from comet_jax.checkpoint import CheckpointError
from comet_jax.convert.hf_import import RECIPE, ConvertError, convert


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="comet-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC_DIR", help="HF model directory (config.json + *.safetensors)")
    ap.add_argument("dst", metavar="DST_DIR", help="output checkpoint directory (must not exist, nor be or "
                    "lie inside SRC_DIR)")
    ap.add_argument("--chunk-size", type=int, help=f"chunk size C (default {RECIPE['chunk_size']}, or the "
                    "official checkpoint's)")
    ap.add_argument("--global-size", type=int, help=f"global memory size G (default {RECIPE['global_size']}; "
                    "0 disables global memory)")
    ap.add_argument("--stride", type=int, help=f"temp beacon stride (default {RECIPE['stride']}; -1 disables "
                    "temp memory)")
    ap.add_argument("--budget", type=int, help=f"temp memory budget (default {RECIPE['budget']})")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"),
                    help="parameter storage dtype (default: the source's dtype, else float32)")
    ap.add_argument("--seed", type=int, default=0, help="seed for new token rows and memory nets")
    ap.add_argument("--overwrite", action="store_true", help="replace DST_DIR if it exists")
    ap.add_argument("--quiet", action="store_true", help="no per-tensor progress")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    log(f"converting {args.src} -> {args.dst}")
    try:
        summary = convert(args.src, args.dst, chunk_size=args.chunk_size, global_size=args.global_size,
                          stride=args.stride, budget=args.budget, dtype=args.dtype, overwrite=args.overwrite,
                          seed=args.seed, log=log)
    except (ConvertError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.dst}", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
