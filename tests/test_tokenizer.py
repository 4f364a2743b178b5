"""The tiny tokenizer: deterministic, Qwen-like special tokens and chat template, HF round trip."""

import time

import pytest
from transformers import AutoTokenizer

from attnrl_jax.data.tokenizer import SPECIAL_TOKENS, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_builds_fast_and_deterministically(tok):
    # CPU time of this process (not wall time, which other jobs on the machine inflate): the
    # build is a vocabulary listing (about 5 ms), not a BPE training run (seconds).
    start = time.process_time()
    again = build_tiny_tokenizer()
    assert time.process_time() - start < 1.0
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert len(tok) == 512
    assert len(build_tiny_tokenizer(300)) == 300


def test_special_tokens_are_single_ids(tok):
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == [0, 1, 2, 3, 4]
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == 0
    text = "<think>\nx = 2.\n\nSo y = 4.</think>\n\n\\boxed{4}<|im_end|>"
    enc = tok(text)["input_ids"]
    assert enc[0] == 3 and 4 in enc and enc[-1] == 2
    assert tok.decode(enc) == text


def test_paragraph_breaks_are_merged_like_qwen(tok):
    pieces = [tok.decode([i]) for i in tok("Hence x = 3.\n\nNext\n\nline")["input_ids"]]
    assert ".\n\n" in pieces and "\n\n" in pieces
    assert all(len(p) == 1 for p in (tok.decode([i]) for i in tok("2024")["input_ids"]))


def test_chat_template(tok):
    messages = [{"role": "user", "content": "What is 1+1?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert tok.decode(ids) == text


def test_save_and_reload_with_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    text = "Let $x = 12$.\n\nThen \\boxed{\\frac{1}{2}}.<|im_end|>"
    assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert back.eos_token_id == 0 and back.pad_token_id == 0
    messages = [{"role": "user", "content": "hi"}]
    assert back.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(
        messages, tokenize=False
    )
