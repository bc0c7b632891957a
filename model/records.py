"""The fast path for "a copy of this frozen record with some fields changed".

``evolve`` rebuilds a ``Job``, a ``State`` and a few small records for every event,
and ``attrs.evolve`` (or even a direct call of the generated ``__init__``) was the
largest cost in the profile.  The records rebuilt per event are frozen attrs
classes backed by an instance ``__dict__`` (``slots=False``), so a copy with
changes is exactly: a new empty instance, the old field dict copied into it, the
changes written over it.  Both copies run in C.

It is only valid for classes with no validators, converters or ``__attrs_post_init__``
and no cached hash; ``_check_class`` asserts that once per class, and
``tests/test_fast_paths.py`` checks ``replace_fields(x, **c) == attrs.evolve(x, **c)``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

from .errors import BrokenInvariant

T = TypeVar("T")

_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}


def _check_class(cls: type[Any]) -> frozenset[str]:
    if not attrs.has(cls):
        raise BrokenInvariant(f"{cls!r} is not an attrs class")
    if "__slots__" in cls.__dict__:
        raise BrokenInvariant(f"{cls.__name__} must be dict-backed (slots=False)")
    if hasattr(cls, "__attrs_post_init__"):
        raise BrokenInvariant(f"{cls.__name__} has __attrs_post_init__, which a copy would skip")
    for field in attrs.fields(cls):
        if field.validator is not None:
            raise BrokenInvariant(f"{cls.__name__}.{field.name} has a validator a copy would skip")
        if field.converter is not None:
            raise BrokenInvariant(f"{cls.__name__}.{field.name} has a converter a copy would skip")
    names = frozenset(field.name for field in attrs.fields(cls))
    _FIELD_NAMES[cls] = names
    return names


def replace_fields(record: T, /, **changes: Any) -> T:
    """``attrs.evolve(record, **changes)`` for dict-backed frozen attrs records."""
    cls = type(record)
    names = _FIELD_NAMES.get(cls) or _check_class(cls)
    if not (changes.keys() <= names):
        raise BrokenInvariant(f"not fields of {cls.__name__}: {changes.keys() - names}")
    copy: T = object.__new__(cls)
    fields = copy.__dict__
    fields.update(record.__dict__)
    fields.update(changes)
    return copy
