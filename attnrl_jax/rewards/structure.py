"""Top-level structure of a normalised answer: scalar, tuple/interval, set, list, matrix.

Policy: tuples and intervals (``(a, b)``, ``[a, b)``) are ordered and their bracket types must
agree; ``\\{a, b\\}`` sets, ``\\cup`` unions and bare lists ("enter all solutions") are unordered,
where a bare list is joined by commas and/or the words "or"/"and" (``x = 2 \\text{ or } x = 3``,
``1, 2, and 3``) and is the same set of solutions as ``2, 3``; matrices compare cell by cell
with the same shape (``pmatrix``/``bmatrix`` alike).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPEN = {"(": ")", "[": "]", "{": "}"}
_LEADING_CONJUNCTION = re.compile(r"^(?:or|and)\s+")  # the Oxford comma's "and"
_MATRIX = re.compile(r"^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.S)


@dataclass(frozen=True)
class Structure:
    """``kind`` in scalar|seq|set|list|union|matrix; ``items`` are normalised strings."""

    kind: str
    items: tuple[str, ...]
    brackets: str = ""  # "(]" etc. for seq; "RxC" shape for matrix


def split_top(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside any bracket (``\\{``/``\\}`` count as brackets)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _split_list(s: str) -> list[str]:
    """Top-level items joined by ``,``, `` or ``, `` and `` (``1, 2, or 3``: the comma wins)."""
    items = []
    for part in split_top(s, ","):
        part = _LEADING_CONJUNCTION.sub("", part)
        items += [x for p in split_top(part, " or ") for x in split_top(p, " and ")]
    return items


def _wraps_whole(s: str) -> bool:
    """True when the bracket at ``s[0]`` closes at ``s[-1]`` (not ``(a)+(b)``)."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and i < len(s) - 1:
                return False
    return depth == 0


def parse_structure(s: str) -> Structure:
    """Top-level structure of a normalised answer."""
    s = s.strip()
    m = _MATRIX.match(s)
    if m and "\\begin{" not in m.group(2):  # one matrix, not A + B or A B
        rows = [r for r in (x.strip() for x in m.group(2).split("\\\\")) if r]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        flat = tuple(c for r in cells for c in r)
        return Structure("matrix", flat, "/".join(str(len(r)) for r in cells))
    if len(split_top(s, "\\cup")) > 1:
        return Structure("union", tuple(split_top(s, "\\cup")))
    if s.startswith("\\{") and s.endswith("\\}") and len(s) >= 4:
        inner = s[2:-2]
        if _wraps_whole("(" + inner + ")"):
            return Structure("set", tuple(p for p in split_top(inner, ",") if p))
    items = _split_list(s)
    if len(items) > 1:
        return Structure("list", tuple(items))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _wraps_whole(s):
        inner = split_top(s[1:-1], ",")
        if len(inner) > 1:
            return Structure("seq", tuple(inner), s[0] + s[-1])
    return Structure("scalar", (s,))
