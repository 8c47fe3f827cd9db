"""``NamedTuple`` for the records on exec's path, without importing typing.

``class Damage(NamedTuple): path: EntryPath ...`` is typing.NamedTuple's class
syntax; at run time the class is built by ``collections.namedtuple`` from the
class body's annotations, its defaults and its methods, as typing does it,
without the ~3 ms that importing typing (and building its NamedTuple
machinery) costs every wrapped command. mypy sees typing.NamedTuple itself.
tests/test_startup_paths.py compares the two.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    # What a record's class body may hold besides its fields and methods (typing's _special).
    _SPECIAL = frozenset({"__module__", "__name__", "__qualname__", "__annotations__", "__annotate__"})

    class _RecordMeta(type):
        def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
            annotations = ns.get("__annotations__")
            if annotations is None and callable(ns.get("__annotate__")):  # PEP 649 (3.14)
                annotations = ns["__annotate__"](1)
            fields = list(annotations or {})
            defaults = [ns[f] for f in fields if f in ns]
            if any(f in ns for f in fields[: len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            record = namedtuple(name, fields, defaults=defaults, module=str(ns["__module__"]))
            record.__annotations__ = dict(annotations or {})
            record.__qualname__ = str(ns.get("__qualname__", name))
            for key, value in ns.items():
                if key not in _SPECIAL and key not in fields:
                    setattr(record, key, value)
            return record

    NamedTuple = type.__new__(_RecordMeta, "NamedTuple", (), {"__module__": __name__})
