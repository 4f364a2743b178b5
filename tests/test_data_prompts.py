"""The paper's prompt inside the chat template, as token ids."""

import pytest
from tokenizers import processors

from attnrl_jax.data.prompts import INSTRUCTION, encode_prompts, format_problem, render_prompts
from attnrl_jax.data.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_instruction_is_the_papers():
    assert INSTRUCTION == r"Let's think step by step and output the final answer within \boxed{}."
    assert format_problem("  What is $1+1$?\n") == "What is $1+1$? " + INSTRUCTION
    # verl-style files keep the instruction in the prompt: it is not added twice.
    assert format_problem("What is 2? " + INSTRUCTION) == "What is 2? " + INSTRUCTION
    assert format_problem("What is 2?", instruction="") == "What is 2?"


def test_one_user_turn_with_generation_prompt(tokenizer):
    (text,) = render_prompts(tokenizer, ["What is $1+1$?"])
    assert text == (
        "<|im_start|>user\nWhat is $1+1$? " + INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_token_ids_match_the_rendered_text_and_have_one_bos(tokenizer):
    problems = ["What is $1+1$?", "Find $x$ if $2x = 6$.", "数 7"]
    ids = encode_prompts(tokenizer, problems)
    texts = render_prompts(tokenizer, problems)
    assert ids == [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert [tokenizer.decode(x) for x in ids] == texts
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert all(x[0] == start and x.count(start) == 2 for x in ids)
    assert encode_prompts(tokenizer, []) == []


def test_template_that_writes_its_own_bos_is_not_doubled():
    # R1-Distill's template writes the BOS token as text and its tokenizer also prepends BOS when
    # encoding with special tokens: the prompt must hold exactly one.
    tokenizer = build_tiny_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    tokenizer.chat_template = "<|endoftext|>" + tokenizer.chat_template
    (ids,) = encode_prompts(tokenizer, ["Hi"])
    assert ids[0] == bos and ids.count(bos) == 1


def test_missing_chat_template_is_a_clear_error():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        encode_prompts(tokenizer, ["Hi"])
