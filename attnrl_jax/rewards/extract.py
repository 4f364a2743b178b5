"""Final-answer extraction: the last boxed expression after the last ``</think>``.

Policy (ALGORITHM.md section 4): a reasoning model may box intermediate results while thinking, so
only the text after the last ``</think>`` counts when the tag is present; within it the *last*
``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) or ``\\boxed 5`` (one token) is the answer.
Unbalanced braces give no answer rather than a guessed one.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_THINK_END = "</think>"
_MAX_TRIES = 8


def answer_region(response: str) -> str:
    """Text after the last ``</think>`` if present, else the whole response."""
    i = response.rfind(_THINK_END)
    return response if i < 0 else response[i + len(_THINK_END) :]


def _braced(text: str, start: int) -> str | None:
    """Contents of the brace group opening at ``text[start] == '{'``, or None if unbalanced.

    ``\\{`` and ``\\}`` (set braces) are escaped and do not change the depth.
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Contents of the last well-formed ``\\boxed``/``\\fbox`` in ``text``, or None.

    Scans matches from the end so that a later malformed box (e.g. truncated generation) falls
    back to the previous complete one, as a human reader would.
    """
    for m in reversed(list(_BOX_RE.finditer(text))[-_MAX_TRIES:]):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            inner = _braced(text, j)
            if inner is not None:
                return inner.strip()
        elif j > m.end():  # "\boxed 5": the token after the space, up to whitespace or '$'
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group(0).rstrip(".")
    return None


def extract_answer(response: str) -> str | None:
    """The final boxed answer of a model response, or None when there is none."""
    return last_boxed(answer_region(response))
