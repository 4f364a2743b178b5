"""Data: prompt sources, templates, the demo task, and the project's tiny tokenizer."""

from attnrl_jax.data.filters import (
    LengthReport,
    OverlapReport,
    drop_eval_overlap,
    normalize_problem,
)
from attnrl_jax.data.pipeline import Prompt, PromptStream
from attnrl_jax.data.prepare import DataReport, prepare_prompts
from attnrl_jax.data.prompts import INSTRUCTION, encode_prompts, format_problem, render_prompts
from attnrl_jax.data.records import LoadReport, Problem, SourceSpec, load_many, load_problems
from attnrl_jax.data.sources import DataError

__all__ = [
    "INSTRUCTION",
    "DataError",
    "DataReport",
    "LengthReport",
    "LoadReport",
    "OverlapReport",
    "Problem",
    "Prompt",
    "PromptStream",
    "SourceSpec",
    "drop_eval_overlap",
    "encode_prompts",
    "format_problem",
    "load_many",
    "load_problems",
    "normalize_problem",
    "prepare_prompts",
    "render_prompts",
]
