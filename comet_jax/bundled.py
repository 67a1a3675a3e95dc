"""The YAML configs shipped with comet-jax: `configs/` of a checkout, installed as
`comet_jax/configs/` (pyproject.toml maps the package comet_jax.configs to configs/)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout() -> Path | None:
    """The root of the checkout this package is imported from (also an editable install), or
    None for an installed copy."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "configs").is_dir() else None


def config_dirs() -> list[Path]:
    """Where bundled configs are looked for: the install's comet_jax/configs/, then the
    configs/ of the checkout this package is imported from."""
    root = checkout()
    return [PACKAGE_DIR / "configs"] + ([root / "configs"] if root else [])


def config_path(name: str) -> Path:
    """The bundled config `name` (e.g. "demo_passkey.yaml"); FileNotFoundError naming where
    it was looked for."""
    for d in config_dirs():
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"no bundled config {name} in {' or '.join(map(str, config_dirs()))}")
