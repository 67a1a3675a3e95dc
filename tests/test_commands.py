"""Every command works from any directory: each `[project.scripts]` entry of pyproject.toml
resolves to a callable and answers `--help`, and so does `python -m` of its module, of each
thin alias in eval/ and of `train`; each run with the checkout on PYTHONPATH and a directory
outside it as the working directory.

`help_exit_code("comet-plan")` / `help_exit_code("python -m eval.plan")` are the helpers for
a test that checks the commands a document names."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELP_TIMEOUT_S = 120


@cache
def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def scripts() -> dict[str, tuple[str, str]]:
    """Console script name -> (module, function), from pyproject.toml."""
    out = {}
    for name, target in pyproject()["project"]["scripts"].items():
        module, func = target.split(":")
        out[name] = (module, func)
    return out


def module_command(module: str) -> str:
    """`python -m` spelling of a module (a package's __main__ runs as the package)."""
    return "python -m " + module.removesuffix(".__main__")


def thin_aliases() -> dict[str, str]:
    """`python -m eval.X` -> the package module it runs, for every eval/*.py that is only an
    alias (a docstring, `from <module> import main`, `sys.exit(main())`)."""
    out = {}
    for path in sorted((ROOT / "eval").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        if len(tree.body) <= 5 and len(imports) == 1 and [a.name for a in imports[0].names] == ["main"]:
            out[f"python -m eval.{path.stem}"] = imports[0].module
    return out


def help_argv(command: str) -> list[str]:
    """The argv that runs `<command> --help` without an install: `comet-X` through its
    pyproject entry point, `python -m M [...]` as written."""
    if command in scripts():
        module, func = scripts()[command]
        return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())", "--help"]
    words = command.split()
    if words[:2] == ["python", "-m"] and len(words) == 3:
        return [sys.executable, "-m", words[2], "--help"]
    raise ValueError(f"not a command of this project: {command!r} (a [project.scripts] name or 'python -m M')")


def run_help(command: str, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`<command> --help` in a subprocess, the checkout on PYTHONPATH, in `cwd` (default: a
    fresh temporary directory, outside the checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run(help_argv(command), cwd=cwd or tmp, env=env, capture_output=True, text=True,
                              timeout=HELP_TIMEOUT_S)


def help_exit_code(command: str) -> int:
    """Exit status of `<command> --help` (`comet-X` or `python -m M`), run outside the checkout."""
    return run_help(command).returncode


def help_all(commands: list[str]) -> dict[str, subprocess.CompletedProcess]:
    """`run_help` of each command, a few at a time (most of the cost is starting Python)."""
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        return dict(zip(commands, pool.map(run_help, commands)))


def test_every_script_entry_resolves_to_a_callable():
    assert {"comet-train", "comet-plan", "comet-lower", "comet-demo", "comet-quickstart"} <= set(scripts())
    for name, (module, func) in scripts().items():
        assert callable(getattr(importlib.import_module(module), func, None)), f"{name}: {module}:{func}"


def test_every_thin_alias_runs_a_script_module():
    aliases = thin_aliases()
    assert {"python -m eval.plan", "python -m eval.lower", "python -m eval.demo", "python -m eval.quickstart",
            "python -m eval.loss"} <= set(aliases)
    targets = {module for module, _ in scripts().values()}
    for alias, module in aliases.items():
        assert module in targets, f"{alias} runs {module}, which no [project.scripts] entry names"


def test_every_command_answers_help_outside_the_checkout():
    commands = [*scripts(), *sorted({module_command(m) for m, _ in scripts().values()}), *thin_aliases(),
                "python -m train"]
    results = help_all(commands)
    # "usage:": `python -m` of a module without a main block prints nothing and exits 0
    bad = {c: (r.returncode, (r.stderr or r.stdout)[-500:]) for c, r in results.items()
           if r.returncode != 0 or "usage:" not in r.stdout}
    assert not bad, bad


def test_help_exit_code_spells_commands_as_documents_do():
    assert help_exit_code("comet-quickstart") == 0
    assert help_exit_code("python -m eval.quickstart") == 0
    with pytest.raises(ValueError, match="not a command"):
        help_argv("comet-nope")


def test_pyproject_lists_every_package_and_ships_the_configs():
    tool = pyproject()["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "comet_jax").rglob("__init__.py")}
    assert set(tool["packages"]) == found | {"comet_jax.configs"}
    assert tool["package-dir"] == {"comet_jax.configs": "configs"}
    assert tool["package-data"]["comet_jax.configs"] == ["*.yaml"]
    assert (ROOT / "configs" / "demo_passkey.yaml").is_file() and not (ROOT / "comet_jax" / "configs").exists()
