"""Final-answer extraction: the last boxed expression after the last ``</think>``.

Policy (ALGORITHM.md section 4): a reasoning model may box intermediate results while thinking, so
only the text after the last ``</think>`` counts when the tag is present; within it the *last*
``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) or ``\\boxed 5`` (one token) is the answer.
An unclosed last box gives the previous complete box, or no answer, never a guessed one.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TOKEN_RE = re.compile(r"[^\s$]+")
# between the parts of one answer: commas, "and"/"or", spacing, math delimiters ($, \( \), \[ \])
_JOINER = re.compile(
    r"(?:\s|\$|,|;|\\[,;:()\[\]]|\\q?quad|\\text\{\s*(?:and|or)\s*\}|\b(?:and|or)\b)*"
)
_THINK_END = "</think>"


def answer_region(response: str) -> str:
    """Text after the last ``</think>`` if present, else the whole response."""
    i = response.rfind(_THINK_END)
    return response if i < 0 else response[i + len(_THINK_END) :]


def _brace_pairs(text: str) -> dict[int, int]:
    """Position of each ``{`` -> its matching ``}``, in one pass (unmatched ones are absent).

    A backslash escapes the next character, so ``\\{``/``\\}`` (set braces) are not groups.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, contents) of every complete outermost ``\\boxed``/``\\fbox`` in ``text``.

    A box inside another is part of it (``\\boxed{\\boxed{1} + 2}`` gives ``\\boxed{1} + 2``);
    an unclosed box (a truncated generation) is skipped. Linear time: braces are matched once
    for the whole text.
    """
    pairs = _brace_pairs(text) if "{" in text else {}
    boxes, pos = [], 0
    while (m := _BOX_RE.search(text, pos)) is not None:
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        pos = m.end()
        if j < len(text) and text[j] == "{":
            if j in pairs:
                boxes.append((m.start(), pairs[j] + 1, text[j + 1 : pairs[j]].strip()))
                pos = pairs[j] + 1
        elif j > m.end():  # "\boxed 5": the token after the space, up to whitespace or '$'
            tok = _TOKEN_RE.match(text, j)
            if tok:
                boxes.append((m.start(), tok.end(), tok.group(0).rstrip(".")))
                pos = tok.end()
    return boxes


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete outermost box in ``text``, in order (:func:`boxed_spans`)."""
    return [c for _, _, c in boxed_spans(text)]


def last_box_run(text: str) -> list[str]:
    """Contents of the last run of boxes joined only by commas, "and"/"or", spacing or math
    delimiters (``\\boxed{2}, \\boxed{3} and \\boxed{5}``): the parts of one answer. Boxes with
    other text between them (``\\boxed{3}, no, wait: \\boxed{5}``) are a revision, not parts."""
    spans = boxed_spans(text)
    if not spans:
        return []
    run = [spans[-1]]
    for prev in reversed(spans[:-1]):
        if not _JOINER.fullmatch(text, prev[1], run[0][0]):
            break
        run.insert(0, prev)
    return [c for _, _, c in run]


def last_boxed(text: str) -> str | None:
    """Contents of the last complete outermost box in ``text`` (:func:`boxed_contents`), or None."""
    boxes = boxed_contents(text)
    return boxes[-1] if boxes else None


def extract_answer(response: str) -> str | None:
    """The final boxed answer of a model response, or None when there is none.

    A box that only holds another box (``\\boxed{\\boxed{3}}``) gives the inner answer.
    """
    answer = last_boxed(answer_region(response))
    for _ in range(8):
        if answer is None or not _BOX_RE.match(answer):
            break
        inner = last_boxed(answer)
        if inner is None or not answer.endswith("}"):
            break
        answer = inner
    return answer
