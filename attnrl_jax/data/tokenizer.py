"""The project's own tiny byte-level BPE tokenizer, for tests, demos and benchmarks.

Real runs load the model's own tokenizer; this one exists so that nothing in the test suite needs a
download. It is trained in milliseconds on a small built-in math-flavoured corpus, carries the
Qwen / R1-Distill special tokens and a Qwen-style chat template, and is deterministic: the same
arguments always give the same vocabulary and merges.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Qwen2-style template: every message framed by <|im_start|>role\n ... <|im_end|>\n.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer split: single digits, and punctuation keeps trailing newlines, so ".\n\n"
# and "\n\n" become single tokens as in the real models (step separators are then merged tokens).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Reasoning-style text: paragraphs split by "\n\n", lines by "\n", digits, LaTeX and \boxed{}.
_CORPUS = (
    "Let's think step by step and output the final answer within \\boxed{}.",
    "First, compute the sum: 12 + 30 = 42.\n\nSo the answer is \\boxed{42}.",
    "We have $x^2 - 5x + 6 = 0$, so $(x - 2)(x - 3) = 0$.\nHence $x = 2$ or $x = 3$.\n\n",
    "The area is $\\frac{1}{2} \\cdot 8 \\cdot 6 = 24$.\n\nTherefore, the final answer is "
    "\\boxed{24}.",
    "Wait, let me check again.\n\nIf $n = 7$, then $n^2 = 49$ and $2n + 1 = 15$.\n",
    "Let $a_1 = 3$ and $a_{n+1} = 2a_n - 1$. Then $a_2 = 5$, $a_3 = 9$, $a_4 = 17$.\n\n",
    "The probability is $\\dfrac{3}{10} = 0.3$, and $\\sqrt{16} = 4$.\n\nAnswer: \\boxed{\\dfrac{3}"
    "{10}}",
    "Since $\\sin^2 \\theta + \\cos^2 \\theta = 1$, we get $\\cos \\theta = \\pm \\frac{\\sqrt{3}}"
    "{2}$.\n\n",
    "Alternatively, count the cases: 1, 2, 3, 4, 5, 6, 7, 8, 9, 0.\n"
    "There are 10 cases in total.\n\n",
    "Okay, so I need to find the value of $f(2)$ where $f(x) = 3x + 1$.\n\nThat gives 7.\n\n"
    "**Final Answer**\n\\boxed{7}",
    "Hmm, maybe I made a mistake. Let me recompute: $123 \\times 4 = 492$.\n\n",
    "The remainder when 2024 is divided by 9 is 8, because 2 + 0 + 2 + 4 = 8.\n\n",
    "Step 1\n\nStep 2\n\nStep 3\n\nNow we are done\n\nCheck the result\n\n",
    "Thus $\\left( \\frac{a}{b} \\right)^{2} \\leq 1$ and the minimum is \\boxed{-1}.\n",
)


def build_tiny_tokenizer(
    vocab_size: int = 512, corpus: Iterable[str] | None = None, isolate: str | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` (default: the built-in math corpus).

    isolate: a regex whose matches become tokens of their own before the Qwen2 split (a task's
    one-letter names then stay one token wherever they stand, never merged with "=" or " ").

    Special tokens take ids 0..4 (`<|endoftext|>` is id 0, used as both eos and pad); the 256 byte
    symbols follow, then merges up to `vocab_size`. Any text encodes (byte fallback is inherent).
    """
    texts = list(_CORPUS if corpus is None else corpus)
    tok = Tokenizer(models.BPE())
    first = [pre_tokenizers.Split(Regex(isolate), behavior="isolated")] if isolate else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            *first,
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so merge counts are well separated; training stays in milliseconds.
    tok.train_from_iterator(texts * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
