"""Does FCI find the steps that later steps use? The mechanism check on the chain task, before RL.

    python benchmarks/mechanism.py --out benchmarks/results/mechanism \\
        --json benchmarks/results/mechanism.json

The warm-started model of the chain task (configs/demo_chain.py; built into OUT if missing)
samples responses to held-out problems; one scoring forward (scoring/forward.py) gives each
response's per-step FCI and token entropies. A response counts when its first n steps compute
the problem's n quantities in order ("b=..."), so its step k is quantity k and the task
generator's dependency graph is the ground truth. Candidates are steps 2..n (step 1 is never a
branch point; the answer step uses the last quantity only), and each rule picks one:

    fci            the highest-FCI step (ties: the earlier)
    entropy        the step holding the highest-entropy token (TreeRL's first branch point)
    random         a uniformly random candidate
    random_scored  a random candidate FCI can score (followed by >= delta steps: FCI sums the
                   attention of steps >= delta later, so later steps score 0)

(a) For each rule, the fraction of picked steps that a later step uses, that a step >= delta
    later uses, and that lie on the answer's dependency path; and the AUC of FCI (and of a
    step's largest token entropy) for "used later" among the scoreable candidates.
(b) The paper's Fig. 3: the response is cut after the picked step and regenerated twice from
    there with the same random draws, once as is and once with every later token's attention to
    the picked step's tokens hidden (models/attention.hide_keys); the accuracy of both and the
    paired drop (its standard error over responses). --hide value hides only the step's memo
    value (the "5" of ";c5", what later steps look up by name), so the step sequence stays
    readable and only the use of the value is disrupted.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnrl_jax.data.chain_task import MEMO, NAMES, held_out_chains  # noqa: E402
from attnrl_jax.models.attention import attention, cache_mask, hide_keys  # noqa: E402
from attnrl_jax.models.lm import forward_hidden, logits_from_hidden, unstack_layers  # noqa: E402
from attnrl_jax.sampling.cache import KVCache, prefill_attend  # noqa: E402

RULES = ("fci", "entropy", "random", "random_scored")
CONFIG = ROOT / "configs" / "demo_chain.py"


# ----- generation with a hidden key range -----


def _decode_attend(positions: jax.Array, starts: jax.Array, ends: jax.Array):
    """sampling/cache.decode_attend's cache update, with the key range [start, end) of each row
    hidden (every decoded token comes after it)."""
    mask = hide_keys(cache_mask(positions), starts, ends)

    def attend(layer: int, q, k, v, cache: KVCache):
        rows = jnp.arange(q.shape[0])
        keys = cache.keys[layer].at[rows, :, :, positions].set(k[:, 0])
        values = cache.values[layer].at[rows, :, positions].set(v[:, 0])
        out, _ = attention(q, keys, values, mask, cache_layout=True)
        cache = KVCache(
            cache.keys[:layer] + (keys,) + cache.keys[layer + 1 :],
            cache.values[:layer] + (values,) + cache.values[layer + 1 :],
        )
        return out, cache

    return attend


@functools.partial(jax.jit, static_argnames=("cfg", "max_new"))
def generate(params, contexts, lengths, budgets, starts, ends, key, eos, *, cfg, max_new):
    """Samples (temperature 1) up to budgets[r] <= max_new tokens after each row's context.

    contexts [R, C] right-padded, lengths [R]; starts, ends [R]: the key range hidden from every
    generated token (start == end: none). Draw i of every row comes from fold_in(key, i), so
    two calls with the same key differ only through the hidden range. Returns tokens [R, max_new]
    (0 after a row's end) and counts [R] (EOS included)."""
    layers = unstack_layers(params)
    rows, width = contexts.shape
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), contexts.shape)
    attend = prefill_attend(jnp.arange(rows), width + max_new, None)
    hidden, cache = forward_hidden(layers, cfg, contexts, positions, attend, KVCache((), ()))
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    logits = logits_from_hidden(params, last)
    out = jnp.zeros((rows, max_new), jnp.int32)
    done = budgets <= 0

    def body(i, carry):
        logits, cache, out, count, done = carry
        token = jax.random.categorical(jax.random.fold_in(key, i), logits)
        token = jnp.where(done, 0, token).astype(jnp.int32)
        out = out.at[:, i].set(token)
        count = count + ~done
        done = done | jnp.isin(token, eos) | (i + 1 >= budgets)
        pos = lengths + i
        attend = _decode_attend(pos, starts, ends)
        hidden, cache = forward_hidden(layers, cfg, token[:, None], pos[:, None], attend, cache)
        return logits_from_hidden(params, hidden[:, 0]), cache, out, count, done

    count = jnp.zeros(rows, jnp.int32)
    _, _, out, count, _ = jax.lax.fori_loop(0, max_new, body, (logits, cache, out, count, done))
    return out, count


def run_generate(model, contexts, budgets, hidden, key, eos, max_new, width):
    """Host wrapper: lists of context ids -> lists of generated ids (EOS dropped)."""
    rows = len(contexts)
    padded = np.zeros((rows, width), np.int32)
    for r, ids in enumerate(contexts):
        padded[r, : len(ids)] = ids
    lengths = np.array([len(c) for c in contexts], np.int32)
    starts = np.array([h[0] for h in hidden], np.int32)
    ends = np.array([h[1] for h in hidden], np.int32)
    out, count = generate(
        model.params(), padded, lengths, np.asarray(budgets, np.int32), starts, ends, key,
        np.asarray(eos, np.int32), cfg=model.config, max_new=max_new,
    )  # fmt: skip
    out, count = np.asarray(out), np.asarray(count)
    return [[t for t in out[r, : count[r]] if t not in eos] for r in range(rows)]


# ----- what the model has learned: teacher-forced accuracy by the role of a token -----

ROLES = ("name", "definition", "copied value", "result")


def token_roles(solution: str) -> list[str | None]:
    """Per character of a gold solution: "name" (the quantity's name), "definition" (its
    operands, copied from the prompt), "copied value" (the values of the quantities it uses,
    copied from earlier steps, with the operator between them), "result" (the computed value,
    after the memo's name); None for separators, the memo's name and the answer line."""
    roles: list[str | None] = []
    lines = solution.split("\n\n")
    for i, line in enumerate(lines):
        if i == len(lines) - 1:
            roles += [None] * len(line)
            break
        head, memo = line.split(MEMO)
        parts = head.split("=")  # name, definition, [copied values]
        kinds = ["name", "definition", *(["copied value"] if len(parts) == 3 else [])]
        for j, (part, kind) in enumerate(zip(parts, kinds, strict=True)):
            roles += [None] * (j > 0) + [kind] * len(part)  # the "=" before a part: None
        roles += [None, None] + ["result"] * (len(memo) - 1)  # MEMO, the name, the result
        roles += [None, None]  # the separator
    return roles


def greedy_predictions(model, rows: list[list[int]]) -> list[np.ndarray]:
    """Each row's greedy next-token prediction at every position ([len(row)] each), from one
    forward over all rows right-padded (causal attention: the padding after a row changes none
    of its predictions)."""
    from attnrl_jax.models.lm import forward

    tokens = np.zeros((len(rows), -(-max(map(len, rows)) // 16) * 16), np.int32)
    for r, ids in enumerate(rows):
        tokens[r, : len(ids)] = ids
    predicted = np.asarray(jnp.argmax(forward(model.params(), model.config, tokens), -1))
    return [predicted[r, : len(ids)] for r, ids in enumerate(rows)]


def role_accuracy(model, tokenizer, prompts, solutions) -> dict[str, tuple[float, int]]:
    """Teacher-forced greedy accuracy of the next token, by the role of its last character:
    {role: (accuracy, tokens)}."""
    encoded = [
        tokenizer(s, add_special_tokens=False, return_offsets_mapping=True) for s in solutions
    ]
    rows = [list(p) + e["input_ids"] for p, e in zip(prompts, encoded, strict=True)]
    return score_roles(greedy_predictions(model, rows), prompts, solutions, encoded)


def score_roles(predicted, prompts, solutions, encoded) -> dict[str, tuple[float, int]]:
    """role_accuracy from the predictions: predicted[r][t] is row r's guess for token t + 1;
    encoded: the tokenizer's output for each solution (input_ids, offset_mapping)."""
    hits = {r: [] for r in ROLES}
    for guess, prompt, solution, enc in zip(predicted, prompts, solutions, encoded, strict=True):
        roles = token_roles(solution)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        for t, (token, (_, end)) in enumerate(zip(ids, spans, strict=True)):
            role = roles[end - 1]
            if role is not None:
                hits[role].append(guess[len(prompt) + t - 1] == token)
    return {r: (float(np.mean(h)), len(h)) for r, h in hits.items()}


# ----- the check -----


def warm_start(out: Path):
    from attnrl_jax.demo.__main__ import load_config
    from attnrl_jax.demo.warm_start import load_or_build_warm_start, recipe_for
    from attnrl_jax.rl.settings import resolve

    config = load_config(CONFIG)
    config.model.path = str(out / "warm_start_chain")
    config.workdir = str(out / "unused")
    c = resolve(config)
    model, seconds = load_or_build_warm_start(c, Path(c.model.path))
    if seconds:
        steps = recipe_for("chain").steps
        print(f"warm start: {steps} supervised steps in {seconds:.0f} s", flush=True)
    return c, model


def parse_steps(tokenizer, response: list[int], layout, n: int) -> bool:
    """Whether response steps 1..n compute the problem's quantities a, b, ... in order."""
    if layout.num_steps < n + 1:
        return False
    for k in range(1, n + 1):
        start, end = layout.bounds[k]
        text = tokenizer.decode(response[start - layout.prompt_len : end - layout.prompt_len])
        if not text.strip().startswith(f"{NAMES[k - 1]}="):
            return False
    return True


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties 1/2; None without both classes."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def pick_steps(item: dict, rng: np.random.Generator, delta: int) -> dict[str, int]:
    """Each rule's step (1-based response step) among candidates 2..n."""
    n, fci, ent = item["n"], item["fci"], item["step_entropy"]
    cand = np.arange(2, n + 1)
    scored = cand[cand + delta <= item["num_steps"]]
    return {
        "fci": int(cand[np.argmax(fci[cand])]),
        "entropy": int(cand[np.argmax(ent[cand])]),
        "random": int(rng.choice(cand)),
        "random_scored": int(rng.choice(scored if len(scored) else cand)),
    }


def value_span(tokenizer, response, bounds, prompt_len: int, k: int) -> tuple[int, int]:
    """The positions [start, end) of step k's memo value (the "5" of ";c5"): what later steps
    look up by name. bounds: the response's step layout (absolute positions); an empty range at
    the step's start when the step has no memo."""
    start, end = bounds[k]
    texts = [tokenizer.decode([t]) for t in response[start - prompt_len : end - prompt_len]]
    if MEMO not in texts[:-2]:
        return start, start
    first = texts.index(MEMO) + 2  # after the memo and its name
    stop = next((i for i in range(first, len(texts)) if "\n" in texts[i]), len(texts))
    return start + first, start + stop


def check(args) -> list[dict]:
    from transformers import AutoTokenizer

    from attnrl_jax.data.prompts import encode_prompts
    from attnrl_jax.rewards.math import grade
    from attnrl_jax.sampling.eos import eos_ids
    from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
    from attnrl_jax.scoring.steps import SeparatorIds

    c, model = warm_start(args.out)
    tokenizer = AutoTokenizer.from_pretrained(c.model.path)
    eos = eos_ids(tokenizer, c.model.path, model.config.eos_token_id)
    delta = c.rollout.scoring.fci.delta
    max_new = c.rollout.max_new_tokens
    held = held_out_chains(args.problems, c.data.num_demo_problems, c.data.demo_seed)
    prompts = encode_prompts(tokenizer, [p.problem for p, _, _ in held])
    width = max(len(p) for p in prompts) + max_new
    width = -(-width // 32) * 32
    rows = [(i, s) for i in range(len(held)) for s in range(args.samples)]
    key = jax.random.key(args.seed)
    responses = run_generate(
        model, [prompts[i] for i, _ in rows], [max_new] * len(rows), [(0, 0)] * len(rows),
        jax.random.fold_in(key, 0), eos, max_new, width,
    )  # fmt: skip
    scored = score_sequences(
        model.params(), model.config, ScoringConfig(with_fci=True, fci=c.rollout.scoring.fci),
        [prompts[i] for i, _ in rows], responses, SeparatorIds.from_tokenizer(tokenizer),
        batch_size=64,
    )  # fmt: skip
    items = []
    for (i, _), response, sc in zip(rows, responses, scored, strict=True):
        problem, _, chain = held[i]
        n = len(chain.steps)
        text = tokenizer.decode(response)
        item = {"i": i, "n": n, "correct": grade(text, problem.answers).correct}
        if not parse_steps(tokenizer, response, sc.layout, n):
            items.append(item | {"parsed": False})
            continue
        s, pl = sc.layout.num_steps, sc.layout.prompt_len
        step_entropy = np.zeros(s + 1)
        for k in range(1, s + 1):
            a, b = sc.layout.bounds[k]
            step_entropy[k] = sc.entropies[a - pl : b - pl].max()
        used = chain.used_by_later()
        far = {r for k in range(n) for r in chain.refs(k) if k - r >= delta}
        items.append(item | {
            "parsed": True, "num_steps": s, "fci": np.asarray(sc.fci, float),
            "step_entropy": step_entropy, "response": response, "bounds": sc.layout.bounds,
            "used": np.array([k - 1 in used for k in range(s + 1)]),
            "far": np.array([k - 1 in far for k in range(s + 1)]),
            "path": np.array([k - 1 in chain.answer_path() for k in range(s + 1)]),
        })  # fmt: skip
    roles = role_accuracy(
        model, tokenizer, prompts[: args.role_problems],
        [s for _, s, _ in held[: args.role_problems]],
    )  # fmt: skip
    print(f"teacher-forced accuracy by role: {roles}", flush=True)
    good = [it for it in items if it["parsed"]]
    print(
        f"{len(items)} responses, {len(good)} in the task's step format, accuracy "
        f"{np.mean([it['correct'] for it in items]):.3f}", flush=True,
    )  # fmt: skip
    rng = np.random.default_rng(args.seed)
    picks = [pick_steps(it, rng, delta) for it in good]
    out = {"responses": len(items), "parsed": len(good), "roles": roles,
           "accuracy": float(np.mean([it["correct"] for it in items]))}  # fmt: skip
    cand_all = [(it, k) for it in good for k in range(2, it["n"] + 1)]
    out["base"] = {
        g: float(np.mean([it[g][k] for it, k in cand_all])) for g in ("used", "far", "path")
    }
    for rule in RULES:
        out[rule] = {g: float(np.mean([it[g][p[rule]] for it, p in zip(good, picks, strict=True)]))
                     for g in ("used", "far", "path")}  # fmt: skip
    for name, key_ in (("fci", "fci"), ("entropy", "step_entropy")):
        aucs = []
        for it in good:
            ks = np.array([k for k in range(2, it["n"] + 1) if k + delta <= it["num_steps"]], int)
            if len(ks):
                a = auc(np.asarray(it[key_])[ks], it["used"][ks])
                if a is not None:
                    aucs.append(a)
        out[f"auc_{name}"] = (float(np.mean(aucs)) if aucs else None, len(aucs))
    # (b) the Fig. 3 disruption
    drops: dict[str, np.ndarray] = {}
    for j, rule in enumerate(RULES):
        contexts, budgets, hidden, golds = [], [], [], []
        for it, p in zip(good, picks, strict=True):
            start, end = it["bounds"][p[rule]]
            prompt = prompts[it["i"]]
            prefix = it["response"][: end - len(prompt)]
            contexts.append(list(prompt) + list(prefix))
            budgets.append(max_new - len(prefix))
            hidden.append(
                (start, end)
                if args.hide == "step"
                else value_span(tokenizer, it["response"], it["bounds"], len(prompt), p[rule])
            )
            golds.append(held[it["i"]][0].answers)
        sub = jax.random.fold_in(key, 1 + j)
        acc = {}
        for mode, hide in (("kept", [(0, 0)] * len(hidden)), ("hidden", hidden)):
            cont = run_generate(model, contexts, budgets, hide, sub, eos, max_new, width)
            acc[mode] = np.array([
                grade(tokenizer.decode(ctx[len(prompts[it["i"]]):] + c), g).correct
                for ctx, c, g, it in zip(contexts, cont, golds, good, strict=True)
            ], float)  # fmt: skip
        drop = acc["kept"] - acc["hidden"]
        drops[rule] = drop
        out[rule] |= {
            "acc_kept": float(acc["kept"].mean()),
            "acc_hidden": float(acc["hidden"].mean()),
            "drop": float(drop.mean()),
            "drop_se": float(drop.std(ddof=1) / np.sqrt(len(drop))),
        }
        if rule != "fci":  # FCI's drop minus this rule's, paired over the same responses
            diff = drops["fci"] - drop
            out[rule] |= {
                "fci_drop_minus_this": float(diff.mean()),
                "fci_drop_minus_this_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
            }
        print(f"{rule}: {out[rule]}", flush=True)
    return json_rows(out, args)


def json_rows(out: dict, args) -> list[dict]:
    params = {"task": "chain", "problems": args.problems, "samples": args.samples,
              "hide": args.hide,
              "responses": out["responses"], "parsed": out["parsed"], "seed": args.seed,
              "machine": platform.machine(), "date": datetime.date.today().isoformat()}  # fmt: skip
    rows = [("warm_start_accuracy", out["accuracy"], "fraction", {})]
    rows += [("teacher_forced_accuracy", acc, "fraction", {"role": role, "tokens": count})
             for role, (acc, count) in out["roles"].items()]  # fmt: skip
    rows += [(f"base_{g}", v, "fraction", {}) for g, v in out["base"].items()]
    for rule in RULES:
        for metric, value in out[rule].items():
            rows.append((metric, value, "fraction", {"rule": rule}))
    for name in ("fci", "entropy"):
        value, count = out[f"auc_{name}"]
        rows.append(
            ("auc_used_later", value, "probability", {"rule": name, "auc_responses": count})
        )
    return [
        {"benchmark": "mechanism", "system": "attnrl_jax", "params": params | extra,
         "metric": metric, "value": value, "unit": unit}
        for metric, value, unit, extra in rows
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the warm start lives here")
    parser.add_argument("--json", type=Path, help="rows in the benchmarks' common format")
    parser.add_argument("--problems", type=int, default=128, help="held-out problems")
    parser.add_argument("--samples", type=int, default=2, help="responses per problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hide",
        choices=("step", "value"),
        default="step",
        help="(b) hides the picked step's tokens (the paper's Fig. 3) or only its memo's value",
    )
    parser.add_argument(
        "--role_problems", type=int, default=64, help="gold solutions for the role accuracy"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = check(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"rows: {args.json}")


if __name__ == "__main__":
    main()
