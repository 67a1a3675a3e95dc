"""Every command works from any directory: each `[project.scripts]` entry of pyproject.toml
resolves to a callable and answers `--help`, and so does `python -m` of its module, of each
thin alias in eval/ and of `train`; each run with the checkout on PYTHONPATH and a directory
outside it as the working directory.

`help_exit_code("comet-plan")` / `help_exit_code("python -m eval.plan")` are the helpers for
a test that checks the commands a document names; the documents a user reads first (README.md
and docs/guide/*.md) are checked so: every command their code blocks run, every `comet-*` name
and `python -m` module in their inline code, every repository path they name."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
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


# --------------------------------------------------------------------------- the documents' commands
DOCS = ["README.md", "docs/guide/*.md"]
# `comet-X` / `python -m M` at the start of a code-block line or of a part after `&&`
_RUN = re.compile(r"^\$?\s*(comet-[a-z][\w-]*|python -m [A-Za-z_][\w.]*)")
# the same names anywhere in inline code, and `eval/X.py` (a checkout module run as `python -m eval.X`)
_INLINE = re.compile(r"(?<![\w./-])(comet-[a-z][\w-]*|python -m [A-Za-z_][\w.]*(?![\w.*{])|eval/\w+\.py)")
_PROJECT = "comet-jax"  # the project's name, not a command
# a repository path in inline code (the whole span) or a config file a code block names
_PATH = re.compile(r"^(?:comet_jax|eval|train|tests|configs)/[\w./*]*$")
_CONFIG = re.compile(r"(?<![\w/])configs/[\w.]+\.yaml")
INSTALLED_ONLY = {"comet_jax/configs/"}  # configs/ as an install lays it out (pyproject.toml)


def doc_files() -> list[Path]:
    return [p for pattern in DOCS for p in sorted(ROOT.glob(pattern))]


def _normalise(name: str) -> str:
    if name.startswith("eval/"):
        return "python -m eval." + name.removeprefix("eval/").removesuffix(".py")
    return name.rstrip(".")


def doc_commands(text: str) -> set[str]:
    """The commands a Markdown text names: `comet-X` or `python -m M` starting a line (or a
    part after `&&`) of a fenced code block, and the same (or `eval/X.py`) in inline code."""
    out, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            for part in line.split("&&"):
                m = _RUN.match(part.strip().strip("\"'"))
                if m:
                    out.add(_normalise(m.group(1)))
            continue
        for span in re.findall(r"`([^`\n]+)`", line):
            out.update(_normalise(n) for n in _INLINE.findall(span))
    return out - {_PROJECT}


def doc_paths(text: str) -> set[str]:
    """Repository paths a Markdown text names: an inline code span that is one path under
    comet_jax/, eval/, train/, tests/ or configs/, and every configs/X.yaml in it."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return {s for s in spans if _PATH.match(s)} | set(_CONFIG.findall(text))


def command_problems(commands: set[str]) -> list[str]:
    """Each command that is neither a [project.scripts] name nor `python -m` of a module that exists."""
    bad = []
    for c in sorted(commands):
        if c.startswith("python -m "):
            module = c.removeprefix("python -m ")
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:  # a parent package that does not exist
                found = False
            if not found:
                bad.append(f"{c}: no module {module}")
        elif c not in scripts():
            bad.append(f"{c}: not a [project.scripts] entry of pyproject.toml")
    return bad


def path_problems(paths: set[str]) -> list[str]:
    return [p for p in sorted(paths - INSTALLED_ONLY) if not any(ROOT.glob(p.rstrip("/")))]


def all_doc_commands() -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): doc_commands(p.read_text(encoding="utf-8")) for p in doc_files()}


def test_doc_parser_finds_commands_and_catches_unknown_ones():
    text = """Run `comet-nosuch --x` or `python -m eval.nosuch`; the comet-jax checkpoint (`comet-jax`);
`python -m eval.*` and `python -m eval.{loss,tasks}` are families, not commands.
`eval/bench_core.py` is a benchmark; `comet_jax/nosuch.py` and `configs/tiny_cpu.yaml` are paths.

```bash
pip install -r requirements.txt && python -m train --config configs/nosuch.yaml && comet-loss --help
comet-plan --config configs/tiny_cpu.yaml
gcloud compute tpus tpu-vm ssh x --command "cd ~/repo && python -m nosuch_pkg.cli --y"
x = comet-train  # not at the start of a line
```
"""
    commands = doc_commands(text)
    assert commands == {"comet-nosuch", "python -m eval.nosuch", "python -m eval.bench_core", "python -m train",
                        "comet-loss", "comet-plan", "python -m nosuch_pkg.cli"}
    assert command_problems(commands) == [
        "comet-nosuch: not a [project.scripts] entry of pyproject.toml",
        "python -m eval.nosuch: no module eval.nosuch",
        "python -m nosuch_pkg.cli: no module nosuch_pkg.cli"]
    assert doc_paths(text) == {"eval/bench_core.py", "comet_jax/nosuch.py", "configs/tiny_cpu.yaml",
                               "configs/nosuch.yaml"}
    assert path_problems(doc_paths(text)) == ["comet_jax/nosuch.py", "configs/nosuch.yaml"]


def test_every_command_and_path_in_the_docs_exists():
    docs = all_doc_commands()
    assert set(docs) >= {"README.md", "docs/guide/demo.md", "docs/guide/tpu.md"}
    assert {"comet-demo", "comet-plan", "python -m train"} <= set().union(*docs.values())
    bad = {doc: problems for doc, commands in docs.items() if (problems := command_problems(commands))}
    bad.update({doc + " (paths)": problems for p in doc_files()
                if (problems := path_problems(doc_paths(p.read_text(encoding="utf-8"))))
                for doc in [str(p.relative_to(ROOT))]})
    assert not bad, bad


def test_every_command_in_the_docs_answers_help():
    checked = {*scripts(), *{module_command(m) for m, _ in scripts().values()}, *thin_aliases(), "python -m train"}
    named = set().union(*all_doc_commands().values())
    commands = sorted(c for c in named - checked if not command_problems({c}))
    results = help_all(commands)
    bad = {c: (r.returncode, (r.stderr or r.stdout)[-500:]) for c, r in results.items()
           if r.returncode != 0 or "usage:" not in r.stdout}
    assert not bad, bad
