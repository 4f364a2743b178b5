"""The end-of-sequence ids of a model: decided here, once, for training, evaluation and the CLIs.

Generation stops after any of: the tokenizer's eos token, config.json's eos_token_id,
generation_config.json's eos_token_id, and, when the prompts are in the chat template (training,
evaluation, `generate --chat_template`), the template's end-of-turn token `<|im_end|>` if the
vocabulary has it: a chat model ends its answer with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnrl_jax.models.hf_io import CheckpointError

END_OF_TURN = ("<|im_end|>",)


def eos_ids(
    tokenizer=None, model_dir: str | Path | None = None, config_eos=None, *, chat: bool = True
) -> tuple[int, ...]:
    """The EOS ids, sorted, without duplicates.

    tokenizer: a transformers tokenizer or None. model_dir: its generation_config.json is read
    when present (a CheckpointError if it is not JSON). config_eos: ModelConfig.eos_token_id (an
    id, a tuple of ids, or None). chat: the prompts are in the chat template (adds its
    end-of-turn token).
    """
    values = [config_eos]
    if tokenizer is not None:
        values.append(tokenizer.eos_token_id)
        if chat:
            vocab = tokenizer.get_vocab()
            values += [vocab[t] for t in END_OF_TURN if t in vocab]
    generation = Path(model_dir) / "generation_config.json" if model_dir is not None else None
    if generation is not None and generation.is_file():
        try:
            values.append(json.loads(generation.read_text()).get("eos_token_id"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{generation} is not valid JSON: {e}") from None
    ids = set()
    for value in values:
        if isinstance(value, list | tuple):
            ids.update(int(i) for i in value)
        elif value is not None:
            ids.add(int(value))
    return tuple(sorted(ids))
