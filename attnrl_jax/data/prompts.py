"""The paper's prompt: the problem plus an instruction, as one user turn of the chat template.

ALGORITHM.md section 9: `{problem} Let's think step by step and output the final answer within
\\boxed{}.` inside the model's chat template, no system prompt, generation prompt added. The
template is rendered to text and then tokenized without special tokens, because templates such
as R1-Distill's write the BOS token themselves (tokenizing with special tokens would double it).
"""

from __future__ import annotations

from collections.abc import Sequence

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def format_problem(problem: str, instruction: str = INSTRUCTION) -> str:
    """The user message for `problem`; an instruction the problem already ends with (as in
    verl-style data files that store the full prompt) is not added twice."""
    problem = problem.strip()
    if not instruction or problem.endswith(instruction):
        return problem
    return f"{problem} {instruction}"


def render_prompts(tokenizer, problems: Sequence[str], instruction: str = INSTRUCTION) -> list[str]:
    """Chat-template text of each problem's prompt, ending with the assistant's turn opening."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat_template; the paper's prompt is one user turn of the "
            "model's chat template (set tokenizer.chat_template or use the model's tokenizer)"
        )
    conversations = [
        [{"role": "user", "content": format_problem(p, instruction)}] for p in problems
    ]
    if not conversations:
        return []
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)


def encode_prompts(
    tokenizer, problems: Sequence[str], instruction: str = INSTRUCTION
) -> list[list[int]]:
    """Token ids of each problem's prompt (one batched call to the fast tokenizer)."""
    texts = render_prompts(tokenizer, problems, instruction)
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
