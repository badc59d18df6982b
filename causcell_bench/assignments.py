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
- dotted keys (``Method.key``) need both parts; method names match case-insensitively;
- on the flags whose values are labels (``--do``, ``--cells``, ``--holdout``), a key or value in
  double quotes is taken whole, commas, ``=`` and spaces included, CSV style (``""`` inside the quotes
  is one ``"``): ``--do 'cell_type="T, CD4"'``. A quote opens only at the start of a key or value, so
  a label with a ``"`` inside still reads as written. Typed flags (``--param``, ``--set``) leave
  quotes to JSON (``--set name='"a,b"'``).

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


@dataclass(frozen=True)
class _Token:
    kind: Literal["text", "quoted", ",", "="]
    start: int  # span in the item, for the text as written
    end: int
    text: str  # a quoted token's content, quotes removed and "" read as "


def _tokens(item: str, quotes: bool) -> list[_Token]:
    """``item`` cut at every ``,`` and ``=``; with ``quotes``, a double-quoted run that starts a key or
    value is one token whatever it holds. Raises ValueError for a quote left open."""
    out: list[_Token] = []
    i, n, at_start = 0, len(item), True
    while i < n:
        ch = item[i]
        if ch in ",=":
            out.append(_Token(ch, i, i + 1, ch))  # type: ignore[arg-type]
            i, at_start = i + 1, True
        elif at_start and ch.isspace():
            i += 1
        elif at_start and quotes and ch == '"':
            j, content = i + 1, []
            while True:
                k = item.find('"', j)
                if k < 0:
                    raise ValueError(f"the double quote at {item[i:i + 12]!r} is not closed")
                content.append(item[j:k])
                if not item.startswith('""', k):
                    break
                content.append('"')  # "" inside the quotes: one quote
                j = k + 2
            out.append(_Token("quoted", i, k + 1, "".join(content)))
            i, at_start = k + 1, False
        else:
            j = i
            while j < n and item[j] not in ",=":
                j += 1
            out.append(_Token("text", i, j, item[i:j]))
            i, at_start = j, False
    return out


def _text(item: str, tokens: list[_Token]) -> str:
    """What ``tokens`` say: a lone quoted token's content as is, else the item's text they span, stripped."""
    solid = [t for t in tokens if t.kind != "text" or t.text.strip()]
    if len(solid) == 1 and solid[0].kind == "quoted":
        return solid[0].text
    return item[tokens[0].start:tokens[-1].end].strip() if tokens else ""


def _split(tokens: list[_Token], sep: str) -> list[list[_Token]]:
    parts: list[list[_Token]] = [[]]
    for t in tokens:
        if t.kind == sep:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


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
    (``optional``). ``typed``: values are read by :func:`read_value` (and quotes are JSON's, not ours).
    """
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]

    def bad(item: str, reason: str) -> BenchError:
        return BenchError(f"cannot read {flag} {item!r}: {reason}; write it as {form}, e.g. {flag} {example}")

    out: dict[tuple[str | None, str], Assignment] = {}
    for item in map(str, items):
        try:
            tokens = _tokens(item, quotes=not typed)
        except ValueError as e:
            raise bad(item, f"{e} (inside quotes, write a \" as \"\")") from None
        parts = _split(tokens, ",") if several else [tokens]
        for part_tokens in parts:
            if not part_tokens:
                raise bad(item, "an empty assignment" if several and len(parts) > 1 else "it is empty")
            part = item[part_tokens[0].start:part_tokens[-1].end].strip()  # as written, for messages
            eq = next((i for i, t in enumerate(part_tokens) if t.kind == "="), None)
            if eq is None:
                # after a comma-split: most likely the tail of a value that holds a comma
                hint = (" (a value holding a comma goes in double quotes, e.g. kind=\"T, CD4\")"
                        if several and len(parts) > 1 and not typed else "")
                raise bad(item, f"{part!r} has no '='{hint}")
            lhs = _text(item, part_tokens[:eq])
            value_tokens = part_tokens[eq + 1:]  # a later '=' belongs to the value
            if not lhs:
                raise bad(item, f"nothing before '=' in {part!r}")
            owner: str | None = None
            if dotted is not None and ("." in lhs or dotted == "required"):
                owner, dot, lhs = (s.strip() for s in lhs.partition("."))
                if not dot or not owner or not lhs:
                    raise bad(item, f"{_text(item, part_tokens[:eq])!r} is not of the form Method.name")
            if multi:
                values = [_text(item, v) for v in _split(value_tokens, ",")]
                if not all(values):
                    raise bad(item, f"an empty value in {part!r}")
                value: Any = list(dict.fromkeys(values))
            else:
                raw = _text(item, value_tokens)
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
