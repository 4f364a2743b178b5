"""EOS ids decided in one place (sampling/eos.py) for training, evaluation and the CLIs."""

import json

import pytest

from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.models.hf_io import CheckpointError
from attnrl_jax.sampling.eos import eos_ids


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_sources_are_merged(tokenizer, tmp_path):
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == 0 and end_of_turn not in (None, 0)
    assert eos_ids(tokenizer) == (0, end_of_turn)  # chat-template prompts by default
    assert eos_ids(tokenizer, chat=False) == (0,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 0]}))
    assert eos_ids(tokenizer, tmp_path, config_eos=(9,), chat=False) == (0, 7, 9)
    assert eos_ids(None, tmp_path, config_eos=3) == (0, 3, 7)
    assert eos_ids() == ()


def test_a_broken_generation_config_is_named(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json is not valid JSON"):
        eos_ids(None, tmp_path)
