"""Each config key carries its documentation: doc() writes it, key_docs() reads it back.

A key is declared `Annotated[type, doc("what it means")] = default`. The description lives
in msgspec's Meta, so it is there at run time and docs/configuration.md and
docs/destinations.md are generated from it (`python -m sendqueue.shared.config_docs`):
the reference cannot say one thing while the code does another.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import msgspec

from sendqueue.shared.durations import Duration, format_duration


def doc(description: str, *, default: str = "") -> msgspec.Meta:
    """The documentation of one key. default: how the docs show a default that its value
    alone would not explain (a required key checked by hand, "[retry]'s", "64 MiB")."""
    return msgspec.Meta(description=description, extra={"default": default} if default else {})


@dataclass(frozen=True)
class KeyDoc:
    name: str
    #: The default as it is written in TOML ("required" when there is none).
    default: str
    description: str


def key_docs(struct: type[msgspec.Struct]) -> list[KeyDoc]:
    """Every key of a config Struct with its documentation, base classes' keys first."""
    hints = typing.get_type_hints(struct, include_extras=True)
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    return [_key_doc(fields[name], hints[name]) for name in hints if name in fields]


def _key_doc(field: msgspec.structs.FieldInfo, hint: Any) -> KeyDoc:
    meta = _meta(hint)
    if meta is None or not meta.description:
        raise TypeError(f"config key {field.name!r} has no doc(): every key documents itself")
    default = (meta.extra or {}).get("default") or _default_text(field)
    return KeyDoc(field.name, default, meta.description)


def _meta(hint: Any) -> msgspec.Meta | None:
    if typing.get_origin(hint) is not typing.Annotated:
        return None
    return next((m for m in hint.__metadata__ if isinstance(m, msgspec.Meta)), None)


def _default_text(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        return toml_value(field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return toml_value(field.default_factory())
    return "required"


def toml_value(value: object) -> str:
    """A default as one would write it in the TOML file, in backticks; None is "none"."""
    if value is None:
        return "none"
    return f"`{_toml(value)}`"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        return f'"{format_duration(value)}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)
