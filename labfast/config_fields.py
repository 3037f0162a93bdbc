"""Typed configuration fields: check a dataclass's values against its annotations, and parse
command-line text (``--set key=value``) by the annotation of the field it sets.

One place decides what ``model.message_passing=no`` or ``augment.zoom_range=0.9,1.1`` means, so
that a value is never taken "as JSON, else as a string": a bool field gets a bool or an error, a
tuple field a tuple of its item type or an error. Supported annotations: ``bool``, ``int``,
``float``, ``str``, ``tuple[T, ...]`` and fixed ``tuple[T, T]``, ``Literal[...]``, ``X | None``,
``dict[K, V]``, ``Any`` and dataclass types.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null")


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of a dataclass (string annotations evaluated)."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def field_type(cls: type, name: str, prefix: str = "") -> Any:
    """The annotation of ``cls.name``; an unknown name raises ``ValueError`` listing the known ones."""
    types_by_name = field_types(cls)
    if name not in types_by_name:
        known = ", ".join(prefix + known for known in types_by_name)
        raise ValueError(f"unknown field {prefix + name!r}; known: {known}")
    return types_by_name[name]


def check(instance: Any) -> None:
    """Check every field of a dataclass instance against its annotation (frozen or not).

    JSON spellings are normalised in place: a list becomes a tuple for a tuple field, an int a
    float for a float field. Anything else of the wrong type raises ``TypeError`` naming
    ``Class.field`` and the value.
    """
    owner = type(instance).__name__
    for name, annotation in field_types(type(instance)).items():
        value = getattr(instance, name)
        checked = coerce(value, annotation, f"{owner}.{name}")
        if checked is not value:
            object.__setattr__(instance, name, checked)


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` if it fits ``annotation`` (lists -> tuples, ints -> floats), else ``TypeError``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [arg for arg in args if arg is not type(None)]
        errors = []
        for member in members:
            try:
                return coerce(value, member, name)
            except TypeError as error:
                errors.append(error)
        raise errors[0] if len(members) == 1 else _wrong(value, annotation, name)
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(arg, bool) for arg in args):
            raise TypeError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise _wrong(value, annotation, name)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(value, annotation, name)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(value, annotation, name)
        return float(value) if isinstance(value, int) else value
    if annotation is str:
        if not isinstance(value, str):
            raise _wrong(value, annotation, name)
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise _wrong(value, annotation, name)
        item_types = _tuple_item_types(annotation, len(value), name)
        return tuple(coerce(item, item_type, f"{name}[{i}]")
                     for i, (item, item_type) in enumerate(zip(value, item_types)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(value, annotation, name)
        key_type, value_type = args or (Any, Any)
        for key, item in value.items():
            coerce(key, key_type, f"{name} key")
            coerce(item, value_type, f"{name}[{key!r}]")
        return value
    if isinstance(annotation, type):
        if not isinstance(value, annotation):
            raise _wrong(value, annotation, name)
        return value
    raise TypeError(f"{name}: annotation {annotation!r} is not supported by labfast.config_fields")


def parse(text: str, annotation: Any, name: str) -> Any:
    """Command-line text -> a value of ``annotation``; ``ValueError`` naming ``name`` and the text.

    bool: true/false, yes/no, on/off, 1/0 (any case); int; float (finite); str as given;
    tuple: ``1,2``, ``1 2``, ``[1,2]`` or ``(1,2)`` (empty text: the empty tuple);
    ``X | None``: ``none`` / ``null`` give None.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    stripped = text.strip()
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and stripped.lower() in _NONE:
            return None
        members = [arg for arg in args if arg is not type(None)]
        if len(members) != 1:
            raise ValueError(f"{name}: cannot parse {text!r} for the union {annotation!r}")
        return parse(text, members[0], name)
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == stripped:
                return choice
        raise ValueError(f"{name} must be one of {', '.join(map(str, args))}, got {text!r}")
    if annotation is bool:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError(f"{name} takes a boolean (true/false, yes/no, on/off, 1/0), got {text!r}")
    if annotation is int:
        try:
            return int(stripped)
        except ValueError:
            raise ValueError(f"{name} takes an integer, got {text!r}") from None
    if annotation is float:
        try:
            value = float(stripped)
        except ValueError:
            raise ValueError(f"{name} takes a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} takes a finite number, got {text!r}")
        return value
    if annotation is str:
        return text
    if origin is tuple:
        if stripped[:1] + stripped[-1:] in ("[]", "()"):
            stripped = stripped[1:-1]
        parts = stripped.replace(",", " ").split()
        try:
            item_types = _tuple_item_types(annotation, len(parts), name)
        except TypeError as error:
            raise ValueError(f"{error}, got {text!r}") from None
        return tuple(parse(part, item_type, f"{name}[{i}]")
                     for i, (part, item_type) in enumerate(zip(parts, item_types)))
    raise ValueError(f"{name} ({_describe(annotation)}) cannot be set from text")


def _tuple_item_types(annotation: Any, length: int, name: str) -> tuple:
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],) * length
    if len(args) != length:
        raise TypeError(f"{name} takes {len(args)} values ({_describe(annotation)}), not {length}")
    return args


def _describe(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) and not typing.get_args(annotation) else str(annotation)


def _wrong(value: Any, annotation: Any, name: str) -> TypeError:
    return TypeError(f"{name} must be {_describe(annotation)}, got {value!r} ({type(value).__name__})")
