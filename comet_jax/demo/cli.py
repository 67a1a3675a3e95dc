"""`comet-demo` / `python -m eval.demo`: one demo (comet_jax/demo/passkey_demo.py), or with
`--seeds` one per training seed and their spread (comet_jax/demo/seeds.py)."""

from __future__ import annotations

import sys

from comet_jax.demo import passkey_demo, seeds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = passkey_demo.build_parser().parse_args(argv)  # --help and bad options end here
    if args.seeds:
        return seeds.main(argv, args.seeds, args.out)
    return passkey_demo.main(argv)


if __name__ == "__main__":
    sys.exit(main())
