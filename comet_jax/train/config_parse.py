"""The parsing under `train_config.load_config`: a value checked against its field's type
(`coerce`), the "unknown key ... did you mean" error (`unknown_key`) and the YAML loader that
refuses repeated keys (`StrictLoader`). Nothing here knows the config's sections, so
`train_config` imports this module and never the other way round."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import yaml

from comet_jax.config import ConfigError


def unknown_key(key: str, known: list[str], what: str, source: str = "") -> ConfigError:
    """'unknown key optim.lrr; known keys of optim: ...; did you mean optim.lr?'"""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    where = f" (in {source})" if source else ""
    return ConfigError(f"unknown key {key}{where}; known {what}: {', '.join(known)}{hint}")


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp)


def coerce(key: str, tp: Any, value: Any) -> Any:
    """`value` as type `tp`, or a ConfigError naming the key, the type and the value."""
    def bad(expected: str = "") -> ConfigError:
        return ConfigError(f"{key} must be {expected or type_name(tp)}, got {value!r} "
                           f"({type(value).__name__})")

    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("a bool (true/false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an int")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise bad("a float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 as the string "1e-4"
            try:
                return float(value)
            except ValueError:
                raise bad("a float") from None
        raise bad("a float")
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad(f"a mapping of {type_name(kt)} to {type_name(vt)}")
        return {coerce(f"{key} key", kt, k): coerce(f"{key}.{k}", vt, v) for k, v in value.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {type_name(it)}")
        return [coerce(f"{key}[{i}]", it, v) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        need = [f.name for f in dataclasses.fields(tp)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        optional = [k for k in hints if k not in need]
        shape = (f"a mapping {{{', '.join(f'{k}: {type_name(hints[k])}' for k in need)}}}"
                 + (f" with optional {', '.join(optional)}" if optional else ""))
        if not isinstance(value, dict) or not set(need) <= set(value):
            raise ConfigError(f"{key} must be {shape}, got {value!r}")
        for k in value:
            if k not in hints:
                raise unknown_key(f"{key}.{k}", list(hints), f"keys of {key}")
        return tp(**{k: coerce(f"{key}.{k}", hints[k], v) for k, v in value.items()})
    raise AssertionError(f"unhandled field type {tp!r} for {key}")  # pragma: no cover


class DuplicateKey(yaml.YAMLError):
    """A key repeated in one YAML mapping (PyYAML itself keeps the last one silently)."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"{line}: duplicate key {key!r} (first at line {first})")
        self.key, self.line, self.first = key, line, first


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping, at any depth: a second
    `train:` section would otherwise replace the whole first one without a word. Keys merged
    in with `<<:` may still be overridden, as YAML allows."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error names it
                    continue
                if first is not key_node:
                    raise DuplicateKey(key, key_node.start_mark.line + 1, first.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)
