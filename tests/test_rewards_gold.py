"""Gold self-consistency on every eval set, through the parallel grader.

Every accepted gold form, boxed at the end of a response, must grade correct; a different
problem's gold must grade incorrect unless the two golds are equal after normalisation. The sets
bundled with the package always run; files of the shared data folder that are not byte-identical
to a bundled one run when that folder is present (a checkout beside the shared workspace).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from attnrl_jax.eval.benchmarks import BENCHMARK_DIR
from attnrl_jax.rewards.batch import Grader
from attnrl_jax.rewards.normalize import canonical, normalize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BUNDLED = sorted(BENCHMARK_DIR.glob("*.jsonl"))
_BUNDLED_BYTES = {p.read_bytes() for p in BUNDLED}
SHARED_ONLY = [
    p
    for p in sorted(SHARED.glob("*.jsonl")) + sorted(SHARED.glob("attnrl_eval/*.jsonl"))
    if p.read_bytes() not in _BUNDLED_BYTES
]
GROUPS = {"bundled": (BUNDLED, 2900), "shared_only": (SHARED_ONLY, 1000)}


def _files(group: str) -> tuple[list[Path], int]:
    files, minimum = GROUPS[group]
    if not files:
        pytest.skip(f"no {group} eval data (shared data folder: {SHARED})")
    return files, minimum


def _golds(path: Path) -> list[list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r.get("answers") or [r["answer"]] for r in rows]


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout_s=10.0, num_workers=2) as g:
        yield g


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_gold_form_grades_correct(grader, group: str):
    files, minimum = _files(group)
    responses, golds, where = [], [], []
    for path in files:
        for i, forms in enumerate(_golds(path)):
            for form in forms:
                responses.append("Some reasoning. Therefore the answer is \\boxed{" + form + "}.")
                golds.append(forms)
                where.append(f"{path.name}:{i + 1} {form!r}")
    assert len(responses) > minimum
    out = grader.grade(responses, golds)
    failures = [(w, r) for w, r in zip(where, out.results, strict=True) if not r.correct]
    assert not failures, failures[:20]
    assert out.num_timeouts == 0


def _similar_pairs(pool: list[list[str]], n: int, rng: random.Random) -> list[list[list[str]]]:
    """Pairs of golds of the same shape (digit-led or not, similar length): the hard negatives,
    e.g. two small numbers in scientific notation, where a loose numeric check errs."""
    groups: dict[tuple[bool, int], list[list[str]]] = {}
    distinct = {canonical(normalize(forms[0])): forms for forms in pool}  # sets repeat problems
    for forms in distinct.values():
        groups.setdefault((forms[0][:1].isdigit(), len(forms[0]) // 4), []).append(forms)
    big = [g for g in groups.values() if len(g) > 1]
    return [rng.sample(rng.choice(big), 2) for _ in range(n)]


@pytest.mark.parametrize("group", sorted(GROUPS))
@pytest.mark.parametrize("sampling", ["uniform", "similar"])
def test_other_problems_gold_grades_incorrect(grader, sampling: str, group: str):
    pool = [forms for path in _files(group)[0] for forms in _golds(path)]
    rng = random.Random(0)
    if sampling == "uniform":
        pairs = [rng.sample(pool, 2) for _ in range(600)]
    else:
        pairs = _similar_pairs(pool, 400, rng)
    out = grader.grade(["\\boxed{" + a[0] + "}" for a, _ in pairs], [b for _, b in pairs])
    same = 0
    for (a, b), r in zip(pairs, out.results, strict=True):
        genuinely_equal = any(canonical(normalize(a[0])) == canonical(normalize(g)) for g in b)
        same += genuinely_equal
        assert r.correct == genuinely_equal, (a, b, r)
    assert same < len(pairs) // 4  # the sample mostly pairs different answers
