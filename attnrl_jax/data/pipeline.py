"""The training prompt stream: shuffled epochs, sharded by JAX process, taken N prompts at a time.

The trainer's prompt batch size changes every step (ALGORITHM.md section 6, adaptive prompt batch
size), so the stream is not a grain `.batch(n)` pipeline: `take(n)` returns the next n prompts
for this process. The order comes from a grain MapDataset (`shuffle(seed).repeat(epochs)`:
random access, each epoch shuffled with its own seed) read by position, so the whole iterator
state is one integer, the global position, and a resumed stream yields exactly the prompts an
uninterrupted one would.

Sharding: position g of the global order belongs to process g % process_count. A call
take(n) on every process covers the global positions [G, G + n * process_count), so the
processes get disjoint prompts that together cover the order, and the global prompt batch is
n * process_count. Every process must call take with the same n (the trainer computes n from
globally reduced values, so it does). Because the state is global, a run may resume with a
different number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from attnrl_jax.data.records import Problem
from attnrl_jax.data.sources import DataError


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A training problem with its encoded prompt (chat template applied)."""

    problem: Problem
    prompt_ids: tuple[int, ...]


class PromptStream:
    """Prompts in shuffled order for one JAX process; see the module docstring.

    epochs=None repeats forever (RL runs are measured in steps). With a finite number of epochs,
    take returns fewer prompts (the same number on every process, possibly zero) at the end; up
    to process_count - 1 trailing prompts of the last epoch are left out so that it stays equal.
    """

    def __init__(
        self,
        prompts: Sequence[Prompt],
        *,
        seed: int,
        epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if not prompts:
            raise DataError("no training prompts left to stream")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None (forever), got {epochs}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self._order = grain.MapDataset.source(list(prompts)).shuffle(seed=seed).repeat(epochs)
        self._num_prompts = len(prompts)
        self._end = None if epochs is None else len(prompts) * epochs
        self._process_index = process_index
        self._process_count = process_count
        self._position = 0
        self._identity = {
            "num_prompts": len(prompts),
            "seed": seed,
            "epochs": epochs or 0,
            "data_hash": _data_hash(prompts),
        }

    @property
    def epoch(self) -> float:
        """Epochs consumed so far (global), e.g. 1.25."""
        return self._position / self._num_prompts

    def take(self, n: int) -> list[Prompt]:
        """This process's next n prompts (fewer only at the end of a finite stream)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        count = self._process_count
        if self._end is not None:
            n = min(n, (self._end - self._position) // count)
        start = self._position + (self._process_index - self._position) % count
        stop = self._position + n * count
        self._position = stop
        return [self._order[g] for g in range(start, stop, count)]

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable state: the global position and what identifies the data order."""
        return {"position": self._position, **self._identity}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from get_state()'s result; the data, seed and epochs must be the same."""
        changed = [k for k, v in self._identity.items() if state.get(k) != v]
        if changed:
            saved = {k: state.get(k) for k in changed}
            now = {k: self._identity[k] for k in changed}
            raise DataError(
                f"the data stream state does not match this data: saved {saved}, now {now}; "
                "resume with the same data files, filters, tokenizer, seed and epochs"
            )
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise DataError(f"bad data stream position {position!r}")
        self._position = position


def _data_hash(prompts: Sequence[Prompt]) -> str:
    """A short fingerprint of the prompt list (texts and token ids, not file locations, so moving
    the data directory does not matter), so a resume against different data fails loudly."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.problem.problem.encode())
        digest.update(np.asarray(prompt.prompt_ids, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
