"""The prompt stream: seeded epochs, process shards, varying take sizes, exact resume."""

import json

import pytest

from attnrl_jax.data.pipeline import Prompt, PromptStream
from attnrl_jax.data.records import Problem
from attnrl_jax.data.sources import DataError

SIZES = [3, 1, 4, 1, 5, 9, 2, 6]  # a varying prompt batch size, as ADS asks for


def _prompts(count: int, tag: str = "p") -> list[Prompt]:
    return [
        Prompt(Problem(f"{tag}{i}", (str(i),), f"f line {i + 1}"), (i, 7)) for i in range(count)
    ]


def _ids(batch: list[Prompt]) -> list[int]:
    return [p.prompt_ids[0] for p in batch]


def test_epochs_are_seeded_permutations():
    stream = PromptStream(_prompts(10), seed=3)
    first, second = _ids(stream.take(10)), _ids(stream.take(10))
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # each epoch has its own order
    assert first != list(range(10))
    assert stream.epoch == 2.0
    assert _ids(PromptStream(_prompts(10), seed=3).take(20)) == first + second
    assert _ids(PromptStream(_prompts(10), seed=4).take(10)) != first


def test_varying_sizes_read_the_same_order():
    whole = _ids(PromptStream(_prompts(13), seed=0).take(sum(SIZES)))
    stream = PromptStream(_prompts(13), seed=0)
    parts = [_ids(stream.take(n)) for n in SIZES]
    assert [len(p) for p in parts] == SIZES
    assert sum(parts, []) == whole
    assert stream.take(0) == []


def test_finite_epochs_end():
    stream = PromptStream(_prompts(5), seed=1, epochs=2)
    batches = [_ids(stream.take(4)) for _ in range(4)]
    assert [len(b) for b in batches] == [4, 4, 2, 0]
    taken = sum(batches, [])
    assert sorted(taken[:5]) == sorted(taken[5:]) == list(range(5))


def test_two_process_shards_interleave_to_the_single_process_order():
    single = PromptStream(_prompts(11), seed=5)
    shards = [PromptStream(_prompts(11), seed=5, process_index=i, process_count=2) for i in (0, 1)]
    for n in SIZES:
        local = [_ids(s.take(n)) for s in shards]
        assert [len(x) for x in local] == [n, n]
        merged = [x for pair in zip(*local, strict=True) for x in pair]
        assert merged == _ids(single.take(2 * n))


def test_two_process_shards_are_disjoint_and_cover_an_epoch():
    shards = [
        PromptStream(_prompts(12), seed=5, epochs=1, process_index=i, process_count=2)
        for i in (0, 1)
    ]
    local = [sum((_ids(s.take(n)) for n in (1, 2, 3, 4)), []) for s in shards]
    assert [len(x) for x in local] == [6, 6]
    assert not set(local[0]) & set(local[1])
    assert sorted(local[0] + local[1]) == list(range(12))


def test_finite_shards_stay_equal():
    shards = [
        PromptStream(_prompts(7), seed=2, epochs=1, process_index=i, process_count=2)
        for i in (0, 1)
    ]
    local = [_ids(s.take(10)) for s in shards]
    assert [len(x) for x in local] == [3, 3]  # 7 = 2 * 3 + 1: one prompt left out
    assert len(set(local[0]) | set(local[1])) == 6
    assert [s.take(1) for s in shards] == [[], []]


def test_state_round_trip_resumes_exactly():
    stream = PromptStream(_prompts(9), seed=11)
    for n in SIZES[:3]:
        stream.take(n)
    state = json.loads(json.dumps(stream.get_state()))  # checkpoints store it as JSON
    expected = [_ids(stream.take(n)) for n in SIZES]

    resumed = PromptStream(_prompts(9), seed=11)
    resumed.set_state(state)
    assert [_ids(resumed.take(n)) for n in SIZES] == expected
    assert resumed.get_state() == stream.get_state()


def test_resume_on_a_different_process_count():
    single = PromptStream(_prompts(9), seed=11)
    single.take(5)  # an odd global position: processes resume at different local offsets
    state = single.get_state()
    expected = _ids(single.take(8))
    shards = [PromptStream(_prompts(9), seed=11, process_index=i, process_count=2) for i in (0, 1)]
    for shard in shards:
        shard.set_state(state)
    local = [_ids(s.take(4)) for s in shards]
    assert sorted(local[0] + local[1]) == sorted(expected)
    assert [shard.get_state() for shard in shards] == [single.get_state()] * 2


def test_state_of_other_data_is_refused():
    state = PromptStream(_prompts(9), seed=11).get_state()
    for other in (
        PromptStream(_prompts(9), seed=12),
        PromptStream(_prompts(9, tag="q"), seed=11),
        PromptStream(_prompts(10), seed=11),
        PromptStream(_prompts(9), seed=11, epochs=3),
    ):
        with pytest.raises(DataError, match="does not match this data"):
            other.set_state(state)
    with pytest.raises(DataError, match="bad data stream position"):
        PromptStream(_prompts(9), seed=11).set_state({**state, "position": -1})


def test_bad_settings():
    with pytest.raises(DataError, match="no training prompts"):
        PromptStream([], seed=0)
    with pytest.raises(ValueError, match="seed"):
        PromptStream(_prompts(3), seed=-1)
    with pytest.raises(ValueError, match="epochs"):
        PromptStream(_prompts(3), seed=0, epochs=0)
    with pytest.raises(ValueError, match="process_index"):
        PromptStream(_prompts(3), seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="n must be"):
        PromptStream(_prompts(3), seed=0).take(-1)
