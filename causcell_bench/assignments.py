"""One parser for the ``key=value`` lists the command line takes: ``--param``, ``--set``, ``--do``,
``--cells`` and ``--holdout``.

The rules, the same for every flag:

- each use of the flag is one item; an item holds one assignment, or several separated by commas
  where the flag says so (``--do age=a,domain=b``);
- an assignment is ``key=value``, split at the first ``=``: a value may itself hold ``=``, a key
  may not;
- whitespace around keys, values and comma-separated parts is ignored;
- an empty item or part (``a=x,,b=y``, a trailing comma), a missing ``=``, an empty key and an
  empty value are errors (with JSON values, ``key=""`` is the empty string);
- a key given twice with the same value counts once; with different values it is an error,
  except for multi-valued keys (``--cells column=a,b``), whose values are merged;
- dotted keys (``Method.key``) need both parts; method names match case-insensitively.

Every error names the flag, the item and an example.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from causcell_bench.errors import BenchError


@dataclass(frozen=True)
class Assignment:
    """One ``[owner.]key=value`` as read from the command line."""

    key: str
    value: Any  # text; a list of texts when multi-valued; JSON-read when typed
    owner: str | None = None  # "CausCell" of "CausCell.n_steps=500"
    item: str = ""  # the item it came from, for messages


def read_value(raw: str) -> Any:
    """A value as JSON when it parses (numbers, booleans, null, lists, quoted strings), else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_assignments(
    items: str | Sequence[str] | None,
    *,
    flag: str,
    form: str,
    example: str,
    several: bool = False,
    multi: bool = False,
    dotted: Literal["optional", "required"] | None = None,
    typed: bool = False,
) -> list[Assignment]:
    """Read ``key=value`` items by the module's rules, in order, repeats merged.

    ``flag``, ``form`` (e.g. ``concept=value``) and ``example`` (e.g. ``age=age_2``) word the errors.
    ``several``: an item may hold several assignments separated by commas. ``multi``: the value is a
    comma-separated list of values. ``dotted``: the key is ``Owner.key`` (``required``), or may be
    (``optional``). ``typed``: values are read by :func:`read_value`.
    """
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]

    def bad(item: str, reason: str) -> BenchError:
        return BenchError(f"cannot read {flag} {item!r}: {reason}; write it as {form}, e.g. {flag} {example}")

    out: dict[tuple[str | None, str], Assignment] = {}
    for item in map(str, items):
        parts = [p.strip() for p in item.split(",")] if several else [item.strip()]
        for part in parts:
            if not part:
                raise bad(item, "an empty assignment" if several and len(parts) > 1 else "it is empty")
            lhs, eq, raw = (s.strip() for s in part.partition("="))
            if not eq:
                raise bad(item, f"{part!r} has no '='")
            if not lhs:
                raise bad(item, f"nothing before '=' in {part!r}")
            owner: str | None = None
            if dotted is not None and ("." in lhs or dotted == "required"):
                owner, dot, lhs = (s.strip() for s in lhs.partition("."))
                if not dot or not owner or not lhs:
                    raise bad(item, f"{part.partition('=')[0].strip()!r} is not of the form Method.name")
            if multi:
                values = [v.strip() for v in raw.split(",")]
                if not all(values):
                    raise bad(item, f"an empty value in {part!r}")
                value: Any = list(dict.fromkeys(values))
            else:
                if not raw:
                    raise bad(item, f"no value after '=' in {part!r}")
                value = read_value(raw) if typed else raw
            ident = (owner.lower() if owner is not None else None, lhs)
            seen = out.get(ident)
            if seen is None:
                out[ident] = Assignment(lhs, value, owner, item)
            elif multi:
                out[ident] = Assignment(lhs, seen.value + [v for v in value if v not in seen.value], owner, item)
            elif seen.value != value:
                name = f"{seen.owner}.{lhs}" if seen.owner is not None else lhs
                raise BenchError(f"{flag} gives {name} twice ({seen.value!r} and {value!r}); give one value, "
                                 f"e.g. {flag} {example}")
    return list(out.values())


def assignment_dict(items: str | Sequence[str] | None, **rules: Any) -> dict[str, Any]:
    """:func:`parse_assignments` as ``{key: value}`` (for flags without dotted keys)."""
    return {a.key: a.value for a in parse_assignments(items, **rules)}


__all__ = ["Assignment", "assignment_dict", "parse_assignments", "read_value"]
