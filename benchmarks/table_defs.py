"""The generated tables of BENCHMARKS.md: for each marker name, the result files it reads and a
function from their contents to markdown. Every number comes from benchmarks/results/; labels
the rows do not record (model names, the machine and date of a run) are written here.

To add a table: write `def my_table(rows: Rows) -> str` (one argument per source file), add
`"my_table": Table(("my_results.json",), my_table)` to TABLES, wrap the table in BENCHMARKS.md in
`<!-- table: my_table -->` ... `<!-- /table -->`, then run `python benchmarks/tables.py`.
A source with a `*` (e.g. "sample_efficiency*.json") arrives as a list, one item per file.
No JAX here: the test of the tables must stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

MIB = 2**20


class Rows:
    """The `--json` rows of one result file (dicts with benchmark, system, params, metric, value,
    unit), looked up by metric, system and params."""

    def __init__(self, name: str, rows: list[dict]):
        self.name = name
        self.rows = rows

    def matching(self, metric: str | None = None, system: str | None = None, **params) -> list:
        return [
            r
            for r in self.rows
            if (metric is None or r["metric"] == metric)
            and (system is None or r["system"] == system)
            and all(r["params"].get(k) == v for k, v in params.items())
        ]

    def row(self, metric: str, system: str | None = None, **params) -> dict:
        """The one matching row; LookupError when there is none or more than one."""
        hits = self.matching(metric, system, **params)
        if len(hits) != 1:
            raise LookupError(
                f"{self.name}: {len(hits)} rows with metric={metric!r}, system={system!r}, "
                f"params {params}; expected one"
            )
        return hits[0]

    def value(self, metric: str, system: str | None = None, **params) -> Any:
        return self.row(metric, system, **params)["value"]

    def find(self, metric: str, system: str | None = None, **params) -> Any:
        """Like value, but None when no row matches (a system that was not run)."""
        if not self.matching(metric, system, **params):
            return None
        return self.value(metric, system, **params)

    def param_values(self, key: str, **params) -> list:
        """Distinct values of params[key] among rows with these params, in file order."""
        seen = []
        for r in self.matching(**params):
            if key in r["params"] and r["params"][key] not in seen:
                seen.append(r["params"][key])
        return seen


@dataclasses.dataclass(frozen=True)
class Table:
    """sources: file names under benchmarks/results/; render gets their contents in that order
    (a JSON list as Rows, any other JSON as parsed, a `*` source as a list of those)."""

    sources: tuple[str, ...]
    render: Callable[..., str]


def _f(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _x(value: float, decimals: int = 2) -> str:
    return f"{value:.{decimals}f}x"


def _mib(n_bytes: float) -> str:
    return _f(n_bytes / MIB, 0)


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def _sci(value: float) -> str:
    """6.6e-3, not Python's 6.6e-03."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _lines(header: str, align: str, rows: list[str]) -> str:
    return "\n".join([header, align, *rows])


# --- sampler.py: tokens/s against transformers ------------------------------------------------

SAMPLER_TARGET_BATCH = 64  # the target ("at batch 64, at least 3x transformers")


def _tokens_per_s(rows: Rows, system: str, model: str, batch: int) -> float:
    return rows.value("generated_tokens_per_s", system, model=model, batch=batch)


def _speedup(rows: Rows, model: str, batch: int) -> float:
    # From the tokens/s rows: the speedup rows are already rounded to 3 decimals, and rounding
    # them again would turn 2.405 into 2.40.
    ours = _tokens_per_s(rows, "attnrl_jax", model, batch)
    return ours / _tokens_per_s(rows, "transformers", model, batch)


def sampler_cpu(rows: Rows) -> str:
    """sampler.py on CPU: the default engine (continuous batching), the lock-step scheduler and
    transformers on the same requests (equal lengths, EOS off)."""
    out = []
    for model in rows.param_values("model"):
        for batch in rows.param_values("batch", model=model):
            ours = _tokens_per_s(rows, "attnrl_jax", model, batch)
            lockstep = _tokens_per_s(rows, "attnrl_jax_lockstep", model, batch)
            ratio = _bold(_x(_speedup(rows, model, batch)), batch == SAMPLER_TARGET_BATCH)
            out.append(
                f"| {model} | {batch} | {_f(ours, 0)} | {_f(lockstep, 0)} "
                f"| {_f(_tokens_per_s(rows, 'transformers', model, batch), 0)} "
                f"| {ratio} | {_x(ours / lockstep)} "
                f"| {_f(rows.value('compile_time', 'attnrl_jax', model=model, batch=batch), 1)} |"
            )
    return _lines(
        "| model | batch | engine tokens/s | lock-step tokens/s | transformers tokens/s "
        "| engine / transformers | engine / lock-step | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        out,
    )


def sampler_gpu(rows: Rows) -> str:
    out = []
    for model in rows.param_values("model"):
        for batch in rows.param_values("batch", model=model):
            out.append(
                f"| {batch} | {_f(_tokens_per_s(rows, 'attnrl_jax', model, batch), 0)} "
                f"| {_f(_tokens_per_s(rows, 'transformers', model, batch), 0)} "
                f"| {_x(_speedup(rows, model, batch), 1)} "
                f"| {_f(rows.value('compile_time', 'attnrl_jax', model=model, batch=batch), 1)} |"
            )
    return _lines(
        "| batch | attnrl_jax tokens/s | transformers tokens/s | ratio | attnrl_jax compile (s) |",
        "|---:|---:|---:|---:|---:|",
        out,
    )


# --- scoring.py: the scoring forward with and without FCI -------------------------------------

SCORING_TARGET_TOKENS = 4096  # the target ("FCI at most 1.3x ... at 4k tokens")
SYSTEMS = ("scoring", "scoring_fci", "materialised_reference")
# When the paired median and the ratio of the minimums differ by more than this (relative), the
# rounds disagreed (machine noise): the table shows both.
NOISE_GAP = 0.05


def _k(tokens: int) -> str:
    return f"{tokens // 1024}k"


def _fci_ratio(rows: Rows, **params) -> str:
    paired = rows.value("time_ratio_vs_scoring", "scoring_fci", **params)
    of_mins = rows.value("time_min", "scoring_fci", **params) / rows.value(
        "time_min", "scoring", **params
    )
    text = _x(paired)
    if abs(paired / of_mins - 1) > NOISE_GAP:
        text += f" (min/min {_x(of_mins)}: noise)"
    return text


def scoring_cpu(rows: Rows) -> str:
    out = []
    for tokens in rows.param_values("tokens", model="small"):
        p = dict(model="small", tokens=tokens)
        times = [rows.value("time_min", s, **p) for s in ("plain_forward", *SYSTEMS)]
        peaks = [_mib(rows.value("peak_memory_delta", s, **p)) for s in SYSTEMS]
        ratio = _bold(_fci_ratio(rows, **p), tokens == SCORING_TARGET_TOKENS)
        out.append(
            f"| {_k(tokens)} | {' | '.join(_f(t, 3) for t in times)} | {ratio} "
            f"| {' / '.join(peaks)} |"
        )
    return _lines(
        "| tokens | plain forward (s, min) | scoring | scoring + FCI | materialised "
        "| FCI / scoring (paired median) | peak MiB scoring / FCI / materialised |",
        "|---:|---:|---:|---:|---:|---:|---|",
        out,
    )


REAL_SHAPE = "r1-distill-qwen-1.5b"  # the model of the GPU target (its ratio is in bold)
# model param -> (label, decimals of the times)
SCORING_GPU_MODELS = {"small": ("small", 4), REAL_SHAPE: ("1.5B shape, bf16", 3)}


def scoring_gpu(rows: Rows) -> str:
    out = []
    for model in rows.param_values("model"):
        label, decimals = SCORING_GPU_MODELS[model]
        for tokens in rows.param_values("tokens", model=model):
            p = dict(model=model, tokens=tokens)
            times = [rows.find("time_median", s, **p) for s in SYSTEMS]
            temps = [rows.find("compiled_temp_bytes", s, **p) for s in SYSTEMS]
            ratio = _bold(
                _x(rows.value("time_ratio_vs_scoring", "scoring_fci", **p)),
                model == REAL_SHAPE,
            )
            out.append(
                f"| {label} | {_k(tokens)} "
                f"| {' | '.join('not run' if t is None else _f(t, decimals) for t in times)} "
                f"| {ratio} | {' / '.join('-' if b is None else _mib(b) for b in temps)} |"
            )
    return _lines(
        "| model | tokens | scoring (s) | scoring + FCI (s) | materialised (s) | FCI / scoring "
        "| compiled temp MiB scoring / FCI / materialised |",
        "|---|---:|---:|---:|---:|---:|---|",
        out,
    )


def scoring_memory_1p5b(rows: Rows) -> str:
    labels = ("scoring", "scoring + FCI", "materialising reference")
    p = dict(model=REAL_SHAPE, tokens=8192)
    out = [
        f"| {label} | {_mib(rows.value('compiled_temp_bytes', s, **p))} |"
        for label, s in zip(labels, SYSTEMS, strict=True)
    ]
    return _lines("| system | compiled temp MiB |", "|---|---:|", out)


# --- grader.py ---------------------------------------------------------------------------------


def grader(rows: Rows) -> str:
    n_full = rows.row("items_per_s", mode="parallel")["params"]["n"]
    n_fast = rows.row("items_per_s", mode="parallel_without_slow")["params"]["n"]
    n_serial = rows.row("items_per_s", mode="serial_without_slow")["params"]["n"]
    kinds = [r for r in rows.rows if r["metric"].startswith("expected_verdicts_")]
    if not kinds:
        raise LookupError(f"{rows.name}: no expected_verdicts_* rows")
    # the per-kind fractions, weighted by the number of items of each kind
    items = [r["params"]["items"] for r in kinds]
    expected = sum(r["value"] * n for r, n in zip(kinds, items, strict=True)) / sum(items)
    out = [
        ("pool start-up", f"{_f(rows.value('pool_startup'), 2)} s"),
        ("items/s, full mix", _f(rows.value("items_per_s", mode="parallel"), 1)),
        (
            f"items/s, mix without the {n_full - n_fast} slow items",
            _f(rows.value("items_per_s", mode="parallel_without_slow"), 1),
        ),
        (
            f"items/s, serial in one process ({n_serial:,} items, no pool)",
            _f(rows.value("items_per_s", mode="serial_without_slow"), 1),
        ),
        (
            "hard timeouts / in-process stage timeouts",
            f"{rows.value('timeouts')} / {rows.value('stage_timeouts')}",
        ),
        ("fraction of items with the expected verdict", str(round(expected, 4))),
    ]
    return _lines("| measurement | value |", "|---|---:|", [f"| {m} | {v} |" for m, v in out])


# --- grader.py (second version): the two rewards, and agreement with the authors' reward ------


def grader_hybrid(doc: dict) -> str:
    rows = Rows("grader_cpu.json", doc["rows"])
    rewards = ("boxed", "hybrid")
    n_fast = rows.row("items_per_s", mode="parallel_without_slow", reward="hybrid")["params"]["n"]
    n_serial = rows.row("items_per_s", mode="serial_without_slow", reward="hybrid")["params"]["n"]
    n_mix = rows.row("agreement_with_authors", set="mixed")["params"]["items"]
    n_gold = rows.row("agreement_with_authors", set="eval_golds")["params"]["items"]

    def per_reward(metric: str, fmt, **params) -> list[str]:
        return [fmt(rows.value(metric, reward=r, **params)) for r in rewards]

    def expected(reward: str) -> float:
        kinds = [
            r for r in rows.matching("expected_verdicts", reward=reward) if "kind" in r["params"]
        ]
        items = [r["params"]["items"] for r in kinds]
        return sum(r["value"] * n for r, n in zip(kinds, items, strict=True)) / sum(items)

    rate = {r: rows.value("items_per_s", reward=r, mode="parallel_without_slow") for r in rewards}
    serial = {r: rows.value("items_per_s", reward=r, mode="serial_without_slow") for r in rewards}
    runs = rows.row("items_per_s", mode="parallel_without_slow", reward="hybrid")["params"]["runs"]
    out = [
        ("pool start-up (s)", per_reward("pool_startup", lambda v: _f(v, 2))),
        ("items/s, full mix", per_reward("items_per_s", lambda v: _f(v, 1), mode="parallel")),
        (
            f"items/s, mix without the slow items ({n_fast:,}), best of {len(runs)} alternating",
            [_f(rate[r], 1) for r in rewards],
        ),
        (
            f"items/s, serial in one process ({n_serial:,} items, no pool), best of {len(runs)}",
            [_f(serial[r], 1) for r in rewards],
        ),
        (
            "boxed / hybrid items/s: pool / serial",
            [
                "",
                f"{_x(rate['boxed'] / rate['hybrid'])} / {_x(serial['boxed'] / serial['hybrid'])}",
            ],
        ),
        (
            "hard timeouts / in-process stage timeouts",
            [
                f"{rows.value('timeouts', reward=r)} / {rows.value('stage_timeouts', reward=r)}"
                for r in rewards
            ],
        ),
        (
            "fraction of items with the expected verdict",
            [str(round(expected(r), 4)) for r in rewards],
        ),
        (
            f"agreement with the authors' reward, mixed set ({n_mix:,})",
            [
                str(rows.value("agreement_with_authors_boxed_reward", set="mixed")),
                str(rows.value("agreement_with_authors", set="mixed")),
            ],
        ),
        (
            f"agreement with the authors' reward, eval-set golds ({n_gold:,})",
            ["", str(rows.value("agreement_with_authors", set="eval_golds"))],
        ),
    ]
    return _lines(
        "| measurement | boxed (last box only) | hybrid (authors' order) |",
        "|---|---:|---:|",
        [f"| {m} | {b} | {h} |" for m, (b, h) in out],
    )


def grader_long(doc: dict) -> str:
    rows = Rows("grader_cpu.json", doc["rows"])
    endings = {"wrong_box": "a wrong final box", "unboxed": "no box (answer in $...$)"}
    lines = []
    for chars in rows.param_values("chars"):
        for ending, label in endings.items():
            ms = [
                _f(rows.value("long_response_ms", chars=chars, ending=ending, grader=g), 1)
                for g in ("boxed", "hybrid", "math_verify_parse")
            ]
            lines.append(f"| {chars // 1000} kB, {label} | {' | '.join(ms)} |")
    return _lines(
        "| response (no `</think>`: all of it is the answer region) | boxed (ms) | hybrid (ms) "
        "| Math-Verify parse alone (ms) |",
        "|---|---:|---:|---:|",
        lines,
    )


def grader_peer(doc: dict) -> str:
    labels = {
        "math_verify": "Math-Verify 0.9 (as its suite calls it)",
        "authors": "the authors' reward (reproduced)",
        "hybrid": "ours, hybrid",
        "boxed": "ours, boxed only",
    }
    lines = []
    for key, label in labels.items():
        v = doc["summary"][key]
        lines.append(
            f"| {label} | {v['agree']}/{v['n']} ({v['fraction']:.4f}) | "
            f"{v['agree_without_reviewed']}/{v['n_without_reviewed']} "
            f"({v['agree_without_reviewed'] / v['n_without_reviewed']:.4f}) |"
        )
    reviewed = doc["summary"]["hybrid"]["n"] - doc["summary"]["hybrid"]["n_without_reviewed"]
    return _lines(
        f"| grader | agrees with the label | without the {reviewed} labels against the paper's "
        "rules |",
        "|---|---:|---:|",
        lines,
    )


# --- sampler_fci.py: FCI inside the sampler against the scoring forward ----------------------


@dataclasses.dataclass(frozen=True)
class FciRun:
    machine: str  # machine and date: the rows do not record them
    ms_decimals: int  # of ms per token
    s_decimals: int  # of seconds per batch


# One per source file of the table, in order; the GPU's times are 10-100x shorter: one more digit.
FCI_RUNS = (
    FciRun("2-core CPU (shared, load 5-7), 2026-11-26 22:16 UTC", 3, 2),
    FciRun("H200, jax 0.11.2, 2026-11-26 23:05 UTC", 4, 3),
)
FCI_MODELS = {
    "small": "small (hidden {hidden}, {layers} layers)",
    "medium": "medium",
    "1.5b": "1.5B width/heads/vocab, {layers} of 28 layers, {dtype}",
}
DTYPES = {"bfloat16": "bf16", "float32": "f32"}
SAMPLE_SYSTEMS = ("sample", "sample_fci")  # the sampler without / with the FCI option


def _fci_agreement(rows: Rows, model: str, dtype: str, first: bool) -> str:
    exact = rows.value("exact_rows", "sample_fci", model=model)
    batch = rows.row("exact_rows", "sample_fci", model=model)["params"]["batch"]
    rel = rows.value("max_rel_diff_vs_scoring", "sample_fci", model=model)
    if rel == 0:
        return f"equal ({exact}/{batch} rows exact)" if first else f"equal ({exact}/{batch})"
    return f"max rel {_sci(rel)} ({dtype}; {exact}/{batch} rows)"


def sampler_fci(*runs: Rows) -> str:
    if len(runs) != len(FCI_RUNS):
        raise LookupError(f"sampler_fci: {len(runs)} source files but {len(FCI_RUNS)} FCI_RUNS")
    out = []
    for rows, run in zip(runs, FCI_RUNS, strict=True):
        for i, model in enumerate(rows.param_values("model")):
            p = rows.row("ms_per_generated_token", "sample", model=model)["params"]
            dtype = DTYPES.get(p["dtype"], p["dtype"])
            label = FCI_MODELS[model].format(hidden=p["hidden"], layers=p["layers"], dtype=dtype)
            ms = [rows.value("ms_per_generated_token", s, model=model) for s in SAMPLE_SYSTEMS]
            scoring = rows.value("time_per_call", "score_fci", model=model)
            saved = rows.value("saved_s_if_no_scoring_forward_paired_median", model=model)
            out.append(
                f"| {run.machine if i == 0 else 'same'} | {label} "
                f"| {p['batch']} x {p['new_tokens']} "
                f"| {' | '.join(_f(v, run.ms_decimals) for v in ms)} "
                f"| {_x(rows.value('overhead_ratio_paired_median', model=model))} "
                f"| {_f(scoring, run.s_decimals)} | {_f(saved, run.s_decimals)} "
                f"| {_fci_agreement(rows, model, dtype, first=i == 0)} |"
            )
    return _lines(
        "| machine, date | model | batch x new tokens | ms/token sampler | ms/token + FCI "
        "| overhead (paired median) | scoring fwd + FCI (s) | saved per batch (s) "
        "| FCI vs scoring fwd |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
        out,
    )


# --- step_breakdown.py ---------------------------------------------------------------------------

STEP_MODES = ("off_policy", "on_policy")
STEP_PHASES = {  # label -> key of phase_s
    "sampling": "sampling",
    "scoring forward": "scoring",
    "grading": "grading",
    "reference forward (KL)": "reference",
    "update": "update",
}


def _packing(mode: dict) -> str:
    p = mode["packing"]
    saved = 100 * p["tokens_saved_by_tree"]
    return f"{p['row_tokens_tree']:,} / {p['row_tokens_path']:,} ({saved:.1f}% saved)"


def step_breakdown(data: dict) -> str:
    modes = [data["modes"][m] for m in STEP_MODES]
    steps = len(data["per_step"][STEP_MODES[0]])

    def line(label: str, cell: Callable[[dict], str]) -> str:
        return f"| {label} | {' | '.join(cell(m) for m in modes)} |"

    out = [
        line(label, lambda m, k=key: _f(m["phase_s"][k]["mean"], 3))
        for label, key in STEP_PHASES.items()
    ]
    out += [
        line("step", lambda m: _bold(_f(m["step_s"]["mean"], 3), True)),
        line("sampler calls per step", lambda m: _f(m["sampler_calls_per_step"]["mean"], 0)),
        line(
            "first step, wall / compile (s)",
            lambda m: f"{_f(m['first_step']['wall_s'], 1)} / {_f(m['first_step']['compile_s'], 1)}",
        ),
        line(f"row tokens tree-packed / per-path (steps 2..{steps})", _packing),
    ]
    return _lines(
        "| phase (s / step, mean) | one-step off-policy | on-policy |", "|---|---:|---:|", out
    )


def step_overlap(data: dict) -> str:
    """step_breakdown.py's three modes (shared off-policy, on-policy, split devices): phase
    sums, the overlap of the initial sampling with the update, and the paper projection."""
    names = {"off_policy": "off-policy, shared", "on_policy": "on-policy, shared",
             "split": f"off-policy, split ({data['rollout_devices']} sampling)"}  # fmt: skip
    modes = [m for m in names if m in data["modes"]]

    def line(label: str, cell: Callable[[dict], str]) -> str:
        return f"| {label} | {' | '.join(cell(data['modes'][m]) for m in modes)} |"

    def phases(*keys: str) -> Callable[[dict], str]:
        return lambda m: _f(sum(m["phase_s"][k]["mean"] for k in keys), 3)

    out = [
        line("sampling + scoring (s, all threads)", phases("sampling", "scoring")),
        line("update + reference + proximal (s)", phases("update", "reference", "proximal")),
        line("step", lambda m: _bold(_f(m["step_s"]["mean"], 3), True)),
        line("sampler calls per step", lambda m: _f(m["sampler_calls_per_step"]["mean"], 0)),
        line("update span with sampling beside it",
             lambda m: f"{100 * m['update_hidden_under_sampling']:.0f}%"),
        line("initial sampling span under the update",
             lambda m: f"{100 * m['initial_sampling_under_update']:.0f}%"),
        line("steps averaged", lambda m: str(m["steps_averaged"])),
    ]  # fmt: skip
    p = data["projection"]
    out.append(
        f"| projected paper 1.5B step (s; paper {p['paper_step_s']:.0f} on 8 GPUs) | "
        f"{p['projected_split_step_s']:.0f} with {p['best_rollout_gpus']} of 8 sampling; "
        f"{p['projected_with_devices_to_spare_s']:.0f} with devices to spare |"
        + " |"
        * (len(modes) - 1)
    )
    header = "| (s / step, mean of steady steps) | " + " | ".join(names[m] for m in modes) + " |"
    return _lines(header, "|---|" + "---:|" * len(modes), out)


# --- memory_plan.json (benchmarks/memory_plan.py, retired: python -m attnrl_jax.plan) ----------


def memory_plan_table(rows: list[dict]) -> str:
    """One line per compiled phase; '>=' marks a lower bound (the TPU compiler refused it).
    The rows are those of the retired benchmarks/memory_plan.py (BENCHMARKS.md says which)."""
    lines = [
        "| model | phase | target (compiled for) | mesh d x f x t | rows | seq | remat "
        "| args | temp | resident | total GiB/device | fits (90% of HBM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = ">= " if r["lower_bound"] else ""
        phase = f"{r['phase']} ({r['label']})" if r["label"] else r["phase"]
        fits = ", ".join(r["fits"]) or "none"
        lines.append(
            f"| {r['model']} {r['precision']} | {phase} | {r['target']} ({r['compiled_for']}) "
            f"| {r['mesh']} | {r['rows']} | {r['seq']} | {'yes' if r['remat'] else 'no'} "
            f"| {r['arguments_gib']:.2f} | {bound}{r['temporaries_gib']:.2f} "
            f"| {r['resident_gib']:.2f} | {bound}{r['total_gib']:.2f} | {fits} |"
        )
    return "\n".join(lines)


def memory_plan(data: dict) -> str:
    return memory_plan_table(data["rows"])


# --- python -m attnrl_jax.plan (fit_plan.json: one entry per run of the CLI) ----------------------


def fit_plan(data: dict) -> str:
    """One line per phase of each `attnrl_jax.plan` run: GiB per device against 90% of HBM."""
    lines = [
        "| run | topology | mesh | phase | args | temps | resident | total GiB/device "
        "| HBM | fits |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in data["runs"]:
        for r in run["rows"]:
            total = _bold(_f(r["total_gib"], 2), not r["fits"])
            lines.append(
                f"| {run['name']} | {r['topology']} | {r['mesh']} | {r['phase']} "
                f"| {r['args_gib']:.2f} | {r['temp_gib']:.2f} | {r['resident_gib']:.2f} "
                f"| {total} | {r['hbm_gib']:.0f} "
                f"| {'yes' if r['fits'] else '**no**'} |"
            )
    return "\n".join(lines)


# --- decode_layout.py ----------------------------------------------------------------------------


def decode_layout_table(rows: list[dict]) -> str:
    """One line per compiled layout: the collectives inside the sampler's decode loop (per
    decode step) and the weights each device holds. Also what decode_layout.py prints."""
    lines = [
        "| model | target (compiled for) | mesh d x f x t | rows | params layout | weights "
        "GiB/device | collectives in the loop | of them weight gathers | across data x fsdp "
        "| MiB they move |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} {r['precision']} | {r['target']} ({r['compiled_for']}) "
            f"| {r['mesh']} | {r['rows']} | {r['layout']} ({r['param_dtype']}) "
            f"| {r['param_gib_per_device']:.2f} | {r['collectives']} "
            f"| {_bold(str(r['invariant_gathers']), r['layout'] == 'replicated')} "
            f"| {r['batch_axis_collectives']} | {_f(r['collective_bytes'] / MIB, 2)} |"
        )
    return "\n".join(lines)


def decode_layout(rows: Rows) -> str:
    return decode_layout_table(rows.rows)


# --- slot_ratio.py --------------------------------------------------------------------------------


def slot_ratio(data: dict) -> str:
    lines = [
        "| packing | tokens_per_row | row tokens | computed slots | slots / row tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        budget = f"{r['tokens_per_row']:,}" if r["tokens_per_row"] else "0 (pad to longest)"
        lines.append(
            f"| {r['packing']} | {budget} | {r['row_tokens']:,} | {r['slots']:,} "
            f"| {_bold(_x(r['slot_ratio']), bool(r['tokens_per_row']))} |"
        )
    return "\n".join(lines)


# marker name -> Table; BENCHMARKS.md's order
def demo(summary: dict) -> str:
    """`make demo`'s summary.json."""
    out = [
        ("held-out accuracy before RL", f"{summary['accuracy_before']:.3f}"),
        ("held-out accuracy after RL", f"{summary['accuracy_after']:.3f}"),
        ("gain (points)", f"{summary['accuracy_gain_points']:+.1f}"),
        ("accuracy measure", summary["accuracy_metric"]),
        ("RL steps", str(summary["steps"])),
        ("warm start (s)", _f(summary["warm_start_seconds"], 0)),
        ("whole demo after installation (s)", _f(summary["wall_seconds"], 0)),
    ]
    return "\n".join(["| measurement | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in out)])


def demo_seeds(runs: Rows) -> str:
    """benchmarks/demo_seeds.py's runs (runs.jsonl as a JSON list): one line per run, in file
    order; "code" and "warm start" name the commits whose code trained and built them."""
    out = [
        "| code | warm start | seed | RL steps | before | after | gain (points) | wall (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs.rows:
        out.append(
            f"| {r['commit']} | {r['warm_start']} | {r['seed']} | {r['steps']} | "
            f"{r['before']:.3f} | {r['after']:.3f} | {r['gain_points']:+.1f} | "
            f"{_f(r['wall_seconds'], 0)} |"
        )
    return "\n".join(out)


METHOD_LABELS = {
    "grpo": "GRPO",
    "treerl": "TreeRL (entropy branching)",
    "treerl_off_policy": "TreeRL + one-step off-policy",
    "treerl_atb": "TreeRL + ATB",
    "first_two_steps": "TreeRL + first two steps (`earliest`)",
    "no_attention_filter": "ATB + ADS without attention filter",
    "no_difficulty_expansion": "AttnRL without difficulty-aware expansion",
    "attnrl": "AttnRL",
}


def sample_efficiency(rows: Rows) -> str:
    """benchmarks/sample_efficiency.py: one line per (task, method), means over seeds."""
    lines = [
        "| task | method | seeds | held-out accuracy at the budget: mean ± sd (min-max) "
        "| gain (points) | tokens | wall (s) | steps | valid ratio | MC valid ratio "
        "| prompts first -> last |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for task in rows.param_values("task"):
        for method in rows.param_values("method", task=task):
            at = {"task": task, "method": method}
            v = {r["metric"]: r["value"] for r in rows.matching(**at)}
            seeds = rows.row("final_accuracy_mean", **at)["params"]["seeds"]
            mean, base, mc = v["final_accuracy_mean"], v["warm_start_accuracy"], v["mc_valid_ratio"]
            lines.append(
                f"| {task} | {METHOD_LABELS[method]} | {seeds} | {mean:.3f} ± "
                f"{v['final_accuracy_sd']:.3f} ({v['final_accuracy_min']:.3f}-"
                f"{v['final_accuracy_max']:.3f}) | {100 * (mean - base):+.1f} | "
                f"{_f(v['tokens'], 0)} | {_f(v['wall'], 0)} | {v['steps']:.0f} | "
                f"{v['valid_ratio']:.2f} | {'-' if mc is None else f'{mc:.2f}'} | "
                f"{v['prompt_batch_size_first']:.0f} -> {v['prompt_batch_size_last']:.0f} |"
            )
    return "\n".join(lines)


PAIRED_ENDPOINTS = {
    "final": "at the budget",
    "mean": "mean over the run's evaluations",
    "steps": "after equal optimizer steps (exploratory)",
}


def sample_efficiency_paired(rows: Rows) -> str:
    """benchmarks/sample_efficiency.py: paired differences of held-out accuracy over common seeds,
    at the budget (rows without an endpoint: the studies before endpoints were named) and, where
    recorded, averaged over each run's evaluations or after equal optimizer steps
    (PAIRED_ENDPOINTS); in brackets Holm's adjustment over the two primary comparisons."""
    lines = [
        "| task | comparison | accuracy compared | paired seeds | difference: mean ± sd (points) "
        "| paired t-test p (Holm) | sign-flip p, exact (Holm) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]

    def p_text(p: float | None, adjusted: float | None) -> str:
        text = "-" if p is None else f"{p:.3f}"
        return text if adjusted is None else f"{text} ({adjusted:.3f})"

    for r in rows.matching("paired_difference_mean"):
        at = {k: r["params"][k] for k in ("task", "method", "baseline")}
        endpoint = r["params"].get("endpoint", "final")
        if "endpoint" in r["params"]:
            at["endpoint"] = endpoint
        sd, p_t, p_flip, holm_t, holm_flip = (
            rows.find(m, **at)
            for m in ("paired_difference_sd", "paired_t_p", "paired_sign_flip_p",
                      "paired_t_p_holm", "paired_sign_flip_p_holm")
        )  # fmt: skip
        lines.append(
            f"| {at['task']} | {METHOD_LABELS[at['method']]} vs {METHOD_LABELS[at['baseline']]} "
            f"| {PAIRED_ENDPOINTS[endpoint]} | {r['params']['seeds']} | {100 * r['value']:+.1f} "
            f"± {100 * sd:.1f} | {p_text(p_t, holm_t)} | {p_text(p_flip, holm_flip)} |"
        )
    return "\n".join(lines)


def sample_efficiency_curve(rows: Rows) -> str:
    """benchmarks/sample_efficiency.py: each method's held-out accuracy at each evaluation
    (mean ± sd over seeds; the tokens are the runs' mean at that evaluation)."""
    points = sorted({r["params"]["evaluation"] for r in rows.matching("evaluation_tokens")})
    lines = [
        "| task | method | " + " | ".join(f"evaluation {i}" for i in points) + " |",
        "|---|---|" + "---:|" * len(points),
    ]
    for task in rows.param_values("task", evaluation=points[0]):
        for method in rows.param_values("method", task=task, evaluation=points[0]):
            cells = []
            for i in points:
                at = {"task": task, "method": method, "evaluation": i}
                if not rows.matching("evaluation_tokens", **at):
                    cells.append("")
                    continue
                tokens, mean, sd = (
                    rows.value(m, **at)
                    for m in ("evaluation_tokens", "evaluation_accuracy_mean",
                              "evaluation_accuracy_sd")
                )  # fmt: skip
                cells.append(f"{mean:.3f} ± {sd:.3f} ({tokens / 1000:.0f}k)")
            lines.append(f"| {task} | {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_efficiency_seeds(rows: Rows) -> str:
    """benchmarks/sample_efficiency.py: each run's held-out accuracy at the budget, by seed."""
    seeds = sorted({r["params"]["seed"] for r in rows.matching("final_accuracy_of_seed")})
    lines = [
        "| task | method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|" + "---:|" * len(seeds),
    ]
    for task in rows.param_values("task", seed=seeds[0]):
        for method in rows.param_values("method", task=task):
            at = {"task": task, "method": method}
            if not rows.matching("final_accuracy_of_seed", **at):
                continue
            cells = [rows.find("final_accuracy_of_seed", seed=s, **at) for s in seeds]
            text = ["" if c is None else f"{c:.3f}" for c in cells]
            lines.append(f"| {task} | {METHOD_LABELS[method]} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def sample_efficiency_steps(rows: Rows) -> str:
    """benchmarks/sample_efficiency.at_equal_steps: accuracy after the same optimizer steps."""
    lines = [
        "| task | method | seeds | optimizer steps | held-out accuracy after them: mean ± sd |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows.matching("accuracy_at_step_mean"):
        at = {k: r["params"][k] for k in ("task", "method")}
        sd = rows.value("accuracy_at_step_sd", **at)
        lines.append(
            f"| {at['task']} | {METHOD_LABELS[at['method']]} | {r['params']['seeds']} "
            f"| {r['params']['step']} | {r['value']:.3f} ± {sd:.3f} |"
        )
    return "\n".join(lines)


def sample_efficiency_phases(rows: Rows) -> str:
    """benchmarks/sample_efficiency.py: where each method's step time goes (runs that recorded
    phase times); FCI is computed inside the sampler (fci_source "sampler"), entropies for
    entropy branching in the scoring forward."""
    lines = [
        "| task | method | sampling share | scoring share | update share "
        "| sampling s per 1k generated tokens |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows.matching("time_share_sampling"):
        at = {"task": r["params"]["task"], "method": r["params"]["method"]}
        scoring, update = (rows.value(f"time_share_{p}", **at) for p in ("scoring", "update"))
        lines.append(
            f"| {at['task']} | {METHOD_LABELS[at['method']]} | {r['value']:.2f} | {scoring:.2f} "
            f"| {update:.2f} | {rows.value('sampling_s_per_ktoken', **at):.2f} |"
        )
    return "\n".join(lines)


# --- mechanism.py: FCI against the chain task's dependency graph ------------------------------

MECHANISM_RULES = {
    "fci": "highest FCI",
    "entropy": "highest token entropy",
    "random": "random step",
    "random_scored": "random step FCI can score",
}


def mechanism(rows: Rows) -> str:
    """benchmarks/mechanism.py: (a) where each rule's step falls in the dependency graph,
    (b) accuracy after regenerating from that step with its attention kept / hidden."""

    def v(metric: str, rule: str) -> float:
        return rows.value(metric, rule=rule)

    out = []
    base = {g: rows.value(f"base_{g}") for g in ("used", "far", "path")}
    out.append(
        f"| all candidate steps (base rate) | {base['used']:.2f} | {base['far']:.2f} | "
        f"{base['path']:.2f} | | | |"
    )
    for rule, label in MECHANISM_RULES.items():
        out.append(
            f"| {label} | {v('used', rule):.2f} | {v('far', rule):.2f} | {v('path', rule):.2f} "
            f"| {v('acc_kept', rule):.3f} | {v('acc_hidden', rule):.3f} | "
            f"{100 * v('drop', rule):+.1f} ± {100 * v('drop_se', rule):.1f} |"
        )
    return _lines(
        "| step picked by | used by a later step | used >= delta steps later | on the answer's "
        "path | accuracy, regenerated after it | same, its attention hidden | drop (points) ± "
        "se |",
        "|---|---:|---:|---:|---:|---:|---:|",
        out,
    )


def mechanism_auc(rows: Rows) -> str:
    """benchmarks/mechanism.py: how well each step score ranks used steps above unused ones."""
    out = []
    for rule, label in (("fci", "FCI"), ("entropy", "largest token entropy in the step")):
        r = rows.row("auc_used_later", rule=rule)
        out.append(f"| {label} | {r['value']:.3f} | {r['params']['auc_responses']} |")
    accuracy, parsed = rows.value("warm_start_accuracy"), rows.rows[0]["params"]
    out.append(
        f"| (warm start: accuracy {accuracy:.3f}; {parsed['parsed']} of {parsed['responses']} "
        "responses in the task's step format) | | |"
    )
    return _lines(
        '| step score | AUC for "used by a later step" (0.5: chance) | responses |',
        "|---|---:|---:|",
        out,
    )


def mechanism_roles(rows: Rows) -> str:
    """benchmarks/mechanism.py: the warm start's teacher-forced next-token accuracy on gold
    solutions, by what the token is."""
    out = []
    for r in rows.matching("teacher_forced_accuracy"):
        out.append(f"| {r['params']['role']} | {r['value']:.3f} | {r['params']['tokens']} |")
    return _lines("| token | next-token accuracy (greedy) | tokens |", "|---|---:|---:|", out)


def _variant_value(rows: Rows, variant: str, metric: str) -> float:
    return rows.value(metric, variant=variant)


def chain_warm_start(rows: Rows) -> str:
    """benchmarks/chain_warm_start.py: each warm-start variant of the chain task, what it cost
    and what it learned."""
    out = []
    for r in rows.matching("held_out_accuracy"):
        p = r["params"]
        v = functools.partial(_variant_value, rows, p["variant"])
        roles = " / ".join(
            f"{v('role_accuracy_' + k):.2f}"
            for k in ("name", "definition", "copied_value", "result")
        )
        clean = f"{p['clean_fraction']:.0%} slip-free" if p["clean_fraction"] else "-"
        # the schedule's warm-up: at most a tenth of the steps (demo/warm_start._train)
        w = min(p.get("warmup_steps", 20), p["steps"] // 10)
        warmup = f", warm-up {w}" if w != min(20, p["steps"] // 10) else ""
        out.append(
            f"| {p['variant']} | {p['layers']} x {p['hidden']} ({p['heads']} heads, "
            f"{p['kv_heads']} kv) | "
            f"{p['problems']} | {p['steps']} x {p['batch_size']}, "
            f"lr {p['learning_rate']:g}{warmup} | "
            f"{clean} | {v('final_loss'):.3f} | {r['value']:.3f} | {roles} | "
            f"{v('warm_start_seconds'):.0f} | {p['note']} |"
        )
    return _lines(
        "| variant | layers x hidden | training problems | steps x batch | teacher | loss at the "
        "end | held-out accuracy | next-token accuracy: name / definition / copied value / "
        "result | warm start (s, loaded) | note |",
        "|---|---|---:|---|---|---:|---:|---|---:|---|",
        out,
    )


def chain_warm_start_curve(rows: Rows) -> str:
    """benchmarks/chain_warm_start.py --checkpoint_every: each variant's intermediate models, the
    loss of the batch at that step and the next-token accuracy by role."""
    out = []
    for r in rows.matching("checkpoint_role_accuracy_name"):
        p = r["params"]
        at = {"variant": p["variant"], "step": p["step"]}
        roles = " / ".join(
            f"{rows.value('checkpoint_role_accuracy_' + k, **at):.2f}"
            for k in ("name", "definition", "copied_value", "result")
        )
        loss = rows.value("checkpoint_loss", **at)
        loss = "-" if loss is None else f"{loss:.3f}"
        out.append(f"| {p['variant']} | {p['step']} | {loss} | {roles} |")
    return _lines(
        "| variant | step | loss (that step's batch) | next-token accuracy: name / definition / "
        "copied value / result |",
        "|---|---:|---:|---|",
        out,
    )


# --- branching.py: selection + ADS + advantages, host reference vs jitted ----------------------

BRANCHING_PHASES = {
    "selection": "branch selection (ATB, 600 responses)",
    "ads": "ADS (mean FCI, expansion plan, attention filter)",
    "advantages": "tree values + advantages + zero-advantage filter",
}
BRANCHING_HOST_ROWS = {  # host work of the step outside the total (per response before / batched)
    "layouts": "host, outside the total: step layouts of 600 responses (per response / batched)",
    "fci_finish": "host, outside the total: the sampler's FCI finished for 600 rows (batched)",
    "tree_sources": "host, outside the total: build_problems' flat tree sources",
    "assembly_objects": "host, outside the total: assembly + every Segment / TrainingPath read",
    "rows_tree": "host, outside the total: tree-packed training rows (per object / flat)",
    "rows_path": "host, outside the total: per-path training rows (per object / flat)",
}
BRANCHING_TARGET_MS = 50.0  # the target for the jitted total on this CPU


def branching(rows: Rows) -> str:
    def ms(system: str, phase: str) -> float:
        return rows.value("ms", system, phase=phase)

    out = []
    for phase, label in BRANCHING_PHASES.items():
        host, jitted = ms("host_reference", phase), ms("jitted", phase)
        out.append(f"| {label} | {_f(host, 1)} | {_f(jitted, 1)} |")
    host, jitted = ms("host_reference", "total"), ms("jitted", "total")
    out.append(f"| total | {_f(host, 1)} | {_bold(_f(jitted, 1), jitted < BRANCHING_TARGET_MS)} |")
    packing, assembly = ms("jitted", "packing"), ms("jitted", "assembly")
    out.append(f"| host: padding into arrays (jitted path only) | | {_f(packing, 1)} |")
    out.append(f"| host: token-level tree assembly (jitted path only) | | {_f(assembly, 1)} |")
    end_to_end = jitted + packing + assembly
    out.append(f"| total with the host parts | {_f(host, 1)} | {_f(end_to_end, 1)} |")
    for phase, label in BRANCHING_HOST_ROWS.items():
        before = rows.find("ms", "host_per_response", phase=phase)
        now = rows.find("ms", "host_vectorised", phase=phase)
        if now is None:  # a phase added after the results were measured
            continue
        out.append(f"| {label} | {'' if before is None else _f(before, 1)} | {_f(now, 1)} |")
    return _lines("| phase | host reference, ms | jitted, ms |", "|---|---:|---:|", out)


# --- ab_revisions.py: two checkouts side by side ----------------------------------------------


def ab_revisions(result: dict) -> str:
    out = [
        f"| {r['case']} | {_f(r['base_s'], 3)} | {_f(r['new_s'], 3)} | {_x(r['ratio'])} |"
        for r in result["rows"]
    ]
    return _lines("| case | base, s | new, s | new / base |", "|---|---:|---:|---:|", out)


# --- engine_mix.py: continuous batching on a heavy-tailed length mix ---------------------------

ENGINE_SYSTEMS = {
    "continuous": "continuous engine, the mix",
    "equal": "continuous engine, equal lengths (same total)",
    "lockstep": "lock-step sampler, the mix",
}


def engine_readers(rows: Rows) -> str:
    """engine_mix.py --decode_attention gathered,ragged --systems continuous,equal."""
    out = []
    for reader in ("gathered", "ragged"):
        mix = rows.value("useful_tokens_per_s", f"continuous/{reader}")
        equal = rows.value("useful_tokens_per_s", f"equal/{reader}")
        out.append(f"| {reader} | {_f(mix, 0)} | {_f(equal, 0)} | {_x(mix / equal)} |")
    return _lines(
        "| decode attention | the mix, tokens/s | equal lengths, tokens/s | mix / equal |",
        "|---|---:|---:|---:|",
        out,
    )


def step_packing(*runs: dict) -> str:
    """step_breakdown.py --modes off_policy, one run per (packing, tokens_per_row): the
    update's time per real trained token (the token weight sum, the same in either layout)."""
    out = []
    for run in runs:
        mode = run["modes"]["off_policy"]
        phase, per = mode["phase_s"], mode["per_trained_token"]
        steps = [s for s in run["per_step"]["off_policy"] if s["step"] not in
                 mode["steps_not_averaged"]]  # fmt: skip
        row_tokens = sum(s["row_tokens"] for s in steps) / len(steps)
        trained = per["trained_tokens"] / len(steps)
        budget = next((o.split("=")[1] for o in run["overrides"] if "tokens_per_row" in o), "0")
        out.append(
            f"| {mode['packing']['trained_with']} | {budget} | {len(steps)} | {_f(row_tokens, 0)} "
            f"| {_f(trained, 0)} | {_f(per['slot_ratio'], 2)} | {_f(phase['update']['mean'], 3)} "
            f"| {_f(phase['reference']['mean'] + phase['proximal']['mean'], 3)} "
            f"| {_f(per['update_ms_per_1k'], 1)} | {_f(per['step_ms_per_1k'], 1)} |"
        )
    return _lines(
        "| packing | tokens_per_row | steps averaged | row tokens / step | trained tokens / step "
        "| computed slots / row tokens | update s | reference + proximal s "
        "| update ms per 1k trained tokens (incl. reference, proximal) "
        "| step ms per 1k trained tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        out,
    )


def engine_mix(rows: Rows) -> str:
    """benchmarks/engine_mix.py: one line per system; tokens/s relative to the continuous
    engine; KV columns only for the engines (pages x page size against the live rows' need)."""
    out = []
    ours = rows.value("useful_tokens_per_s", "continuous")
    for system, label in ENGINE_SYSTEMS.items():
        speed = rows.find("useful_tokens_per_s", system)
        if speed is None:
            continue
        kv = rows.find("kv_positions_peak", system)
        memory = "| - | - | -"
        if kv is not None:
            need = rows.value("kv_needed_peak", system)
            worst = rows.value("kv_ratio_worst", system)
            memory = f"| {_f(kv, 0)} | {_f(need, 0)} ({_x(kv / need)}) | {_x(worst)}"
        floor = rows.find("bandwidth_floor_fraction", system)
        out.append(
            f"| {label} | {_f(speed, 0)} | {_x(ours / speed)} "
            f"| {_f(rows.value('slot_utilisation', system), 3)} {memory} "
            f"| {'-' if floor is None else f'{floor:.1%}'} |"
        )
    return _lines(
        "| system | useful tokens/s | continuous is | slot utilisation | peak KV positions "
        "| peak needed (ratio) | worst ratio | of HBM floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        out,
    )


TABLES: dict[str, Table] = {
    "sampler_cpu": Table(("cpu_sampler.json",), sampler_cpu),
    "sampler_gpu": Table(("h200_sampler_gpu.json",), sampler_gpu),
    "scoring_cpu": Table(("cpu_scoring.json",), scoring_cpu),
    "scoring_gpu": Table(("h200_scoring_gpu.json",), scoring_gpu),
    "scoring_memory_1p5b": Table(("cpu_scoring.json",), scoring_memory_1p5b),
    "grader": Table(("cpu_grader.json",), grader),
    "grader_hybrid": Table(("grader_cpu.json",), grader_hybrid),
    "grader_long": Table(("grader_cpu.json",), grader_long),
    "grader_peer": Table(("grader_peer_suite.json",), grader_peer),
    "sampler_fci": Table(("cpu_sampler_fci.json", "h200_sampler_fci_gpu.json"), sampler_fci),
    "step_breakdown": Table(("step_breakdown_cpu.json",), step_breakdown),
    "step_overlap": Table(("step_overlap_cpu.json",), step_overlap),
    "memory_plan": Table(("memory_plan.json",), memory_plan),
    "fit_plan": Table(("fit_plan.json",), fit_plan),
    "slot_ratio": Table(("slot_ratio.json",), slot_ratio),
    "decode_layout": Table(("decode_layout.json",), decode_layout),
    "sample_efficiency": Table(("sample_efficiency.json",), sample_efficiency),
    "sample_efficiency_chain": Table(("sample_efficiency_chain.json",), sample_efficiency),
    "sample_efficiency_chain_paired": Table(
        ("sample_efficiency_chain.json",), sample_efficiency_paired
    ),
    "sample_efficiency_chain_phases": Table(
        ("sample_efficiency_chain.json",), sample_efficiency_phases
    ),
    "sample_efficiency_chain_300k": Table(
        ("sample_efficiency_chain_300k.json",), sample_efficiency
    ),
    "sample_efficiency_chain_300k_paired": Table(
        ("sample_efficiency_chain_300k.json",), sample_efficiency_paired
    ),
    "sample_efficiency_chain_300k_curve": Table(
        ("sample_efficiency_chain_300k.json",), sample_efficiency_curve
    ),
    "sample_efficiency_chain_300k_seeds": Table(
        ("sample_efficiency_chain_300k.json",), sample_efficiency_seeds
    ),
    "sample_efficiency_chain_300k_steps": Table(
        ("sample_efficiency_chain_300k.json",), sample_efficiency_steps
    ),
    "sample_efficiency_chain_300k_phases": Table(
        ("sample_efficiency_chain_300k.json",), sample_efficiency_phases
    ),
    "mechanism": Table(("mechanism.json",), mechanism),
    # the same check with --hide value: only the picked step's memo value is hidden
    "mechanism_value": Table(("mechanism_value.json",), mechanism),
    "mechanism_auc": Table(("mechanism.json",), mechanism_auc),
    "mechanism_roles": Table(("mechanism.json",), mechanism_roles),
    "chain_warm_start": Table(("chain_warm_start.json",), chain_warm_start),
    "chain_warm_start_curve": Table(("chain_warm_start.json",), chain_warm_start_curve),
    "demo": Table(("demo_summary.json",), demo),
    "demo_seeds": Table(("demo_seeds.json",), demo_seeds),
    "branching": Table(("cpu_branching.json",), branching),
    "ab_revisions": Table(("ab_revisions_cpu.json",), ab_revisions),
    "engine_mix": Table(("cpu_engine_mix.json",), engine_mix),
    "engine_readers": Table(("engine_mix_readers.json",), engine_readers),
    "step_packing": Table(
        (
            "step_packing_path_cpu.json",
            "step_packing_tree_cpu.json",
            "step_packing_path_budget_cpu.json",
            "step_packing_tree_budget_cpu.json",
        ),
        step_packing,
    ),
}
