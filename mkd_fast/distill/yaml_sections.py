"""Run files made of typed sections (``train:``, ``student:``, ...) and ``--set KEY=VALUE`` overrides.

Why: one run file bundles several config dataclasses.  A typo or a wrong type anywhere must fail before any
work starts, naming the full dotted key (``train.lr``) and the file; a command-line override is checked the
same way, so an unknown ``--set`` key is an error instead of a value silently ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..teachers.training import _check_type

__all__ = ["read_yaml_mapping", "parse_yaml_value", "apply_overrides", "check_override_keys", "section_values",
           "build_section", "dotted"]


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` is a string (it wants ``1.0e-3``); here it is the float it
    looks like, in files and in ``--set`` values alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def dotted(section: str, key: str) -> str:
    """``train`` + ``lr`` -> ``train.lr``; top-level keys stay as they are."""
    return f"{section}.{key}" if section else key


def read_yaml_mapping(path) -> Dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is ``{}``); errors name the file."""
    path = str(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_Loader)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: no such file {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def parse_yaml_value(text: str, what: str) -> Any:
    """One value written as YAML (``0.01``, ``[sst2, mrpc]``, ``null``); an empty string is None."""
    if not text.strip():
        return None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{what}: the value {text!r} is not valid YAML: {exc}") from None


def _parse_override(text: str) -> Tuple[List[str], Any]:
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY, e.g. train.lr=0.01")
    return [p.strip() for p in parts], parse_yaml_value(raw, f"--set {key.strip()}")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> Tuple[Dict[str, Any], List[str]]:
    """(a copy of ``data`` with each ``KEY=VALUE`` set, the dotted keys set).  Missing or null sections on
    the way are created; a plain value on the way (``seed.x=1``) is an error naming the override."""
    data = copy.deepcopy(dict(data))
    keys = []
    for text in overrides:
        parts, value = _parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
        keys.append(".".join(parts))
    return data, keys


def check_override_keys(keys: Sequence[str], schema: Mapping[str, Optional[Collection[str]]]) -> None:
    """Every overridden key must exist: ``schema`` maps each top-level key to None (a plain value; deeper
    paths go into its mapping, e.g. ``train.task_weights.sst2``) or to the keys its section accepts."""
    for key in keys:
        top, *rest = key.split(".")
        if top not in schema:
            raise ValueError(f"--set {key}: unknown key {top!r} (known: {sorted(schema)})")
        known = schema[top]
        if known is not None and rest and rest[0] not in known:
            raise ValueError(f"--set {key}: unknown key {dotted(top, rest[0])!r} (known {top} keys: {sorted(known)})")


def section_values(cls, data: Any, section: str, source: str, exclude: Collection[str] = ()) -> Dict[str, Any]:
    """Type-checked keyword arguments for the dataclass ``cls`` from ``data`` (the YAML section called
    ``section``; "" for the top level; None is an empty section).  Unknown keys, missing required keys and
    wrong types are ValueErrors naming the dotted key and ``source`` (the file)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: key {section!r}: expected a mapping of {cls.__name__} keys, "
                         f"got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{section} keys" if section else "keys"
        raise ValueError(f"{source}: unknown key(s) {[dotted(section, str(k)) for k in unknown]} "
                         f"(known {where}: {sorted(fields)})")
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{source}: missing required key {dotted(section, name)!r}")
    return {k: _check_type(v, hints[k], dotted(section, k), source) for k, v in data.items()}


def build_section(cls, values: Mapping[str, Any], section: str, source: str):
    """``cls(**values)``; a value its ``__post_init__`` refuses (messages start with the field name) becomes
    a ValueError naming ``section.field`` and ``source``."""
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{source}: {dotted(section, str(exc))}") from None
