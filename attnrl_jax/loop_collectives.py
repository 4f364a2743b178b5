"""The collectives a compiled program runs inside its top-level while loops (the decode loop),
read from the optimized HLO text (`jax.jit(f).lower(...).compile().as_text()`).

    found = loop_collectives(hlo_text, mesh)   # one Collective per op in the loops' bodies
    [c for c in found if c.invariant]          # gathers of loop-invariant values (weights)

A collective is `invariant` when its operands do not change from one iteration to the next:
they come only from constants and from loop-carried values that the body passes through
unchanged (the weights, EOS ids, the seed). Such a collective repeats the same transfer every
step: a weight all-gather in the decode loop. `batch_axes`: its device groups (or
collective-permute pairs) join devices with different (data, fsdp) coordinates of `mesh`, which
a batch-parallel decode step never needs for its matmuls.

The body is followed into everything it calls (fusions, conditionals, nested whiles, async
wrappers), mapping each callee's parameters to the caller's operands.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np
from jax.sharding import Mesh

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_BYTES |= {"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_HEAD = re.compile(r"^\s*(ROOT\s+)?(%[\w.\-]+)\s*=\s*")
_CALLEES = re.compile(
    r"\b(calls|to_apply|body|condition|branch_computations|true_computation|"
    r"false_computation)=(\{[^}]*\}|%[\w.\-]+)"
)
TOP_LOOP = re.compile(r'op_name="jit\([^)"]*\)/while"')


@dataclasses.dataclass(frozen=True)
class Instr:
    name: str
    shape: str  # the result type, e.g. "f32[8,48]{1,0}" or a tuple "(s32[], ...)"
    opcode: str
    args: str  # the text between the opcode's parentheses
    attrs: str  # the text after them
    root: bool

    @property
    def operands(self) -> list[str]:
        return re.findall(r"%[\w.\-]+", self.args)


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of KINDS (an async -start / -done pair counts once, as its -start)
    shape: str
    bytes: int  # of the result, per device
    invariant: bool
    batch_axes: bool
    op_name: str  # the JAX operation it came from (metadata), e.g. ".../dot_general"
    computation: str


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "({[":
            depth += 1
        elif text[i] in ")}]":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced brackets in HLO text: {text[:200]}")


def _parse_instr(line: str) -> Instr | None:
    head = _HEAD.match(line)
    if head is None:
        return None
    rest = line[head.end() :]
    end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    found = re.match(r"([\w\-]+)\(", rest)
    if found is None:
        return None
    close = _balanced(rest, found.end() - 1)
    args = rest[found.end() : close - 1]
    return Instr(head.group(2), shape, found.group(1), args, rest[close:], bool(head.group(1)))


def parse_computations(text: str) -> dict[str, list[Instr]]:
    """Computation name -> its instructions, in order."""
    comps: dict[str, list[Instr]] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"^(?:ENTRY\s+)?(%[\w.\-]+)\s.*\{\s*$", line)
        if start:
            current = comps.setdefault(start.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None and (instr := _parse_instr(line)) is not None:
            current.append(instr)
    return comps


def _callees(instr: Instr) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in _CALLEES.findall(instr.attrs):
        out.setdefault(key, []).extend(re.findall(r"%[\w.\-]+", value))
    return out


def _result_bytes(shape: str, opcode: str) -> int:
    """Bytes a collective delivers: its result's (a tuple: every element's, as a combined
    all-reduce returns them), or for an async gather / permute start, whose tuple also holds
    its operand and context, the largest element's."""
    sizes = [
        math.prod(int(d) for d in dims.split(",") if d) * _BYTES.get(dtype, 4)
        for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape)
    ]
    if opcode in ("all-gather-start", "collective-permute-start"):
        return max(sizes, default=0)
    return sum(sizes)


def _ints(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def _iota(dims: str, perm: str | None) -> np.ndarray:
    """Device ids of "[dims]T(perm)": arange reshaped to dims, then transposed."""
    ids = np.arange(math.prod(_ints(dims))).reshape(_ints(dims))
    return ids.transpose(_ints(perm)) if perm else ids


def device_groups(attrs: str) -> list[list[int]] | None:
    """A collective's replica_groups as lists of device ids, from any of the formats XLA
    prints ({{0,1},{2,3}}, [2,2]<=[4], [2,2]<=[2,2]T(1,0), mesh['a'=2,'b'=2] {'b'}); None when
    it has none (every device)."""
    found = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", attrs)
    if found:
        return [_ints(g) for g in re.findall(r"\{([\d,]*)\}", found.group(1))] or None
    found = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
    if found:
        return _iota(found.group(2), found.group(3)).reshape(_ints(found.group(1))).tolist()
    found = re.search(
        r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))?"
        r" \{([^}]*)\}",
        attrs,
    )
    if found:
        axes = re.findall(r"'(\w+)'=(\d+)", found.group(1))
        names, dims = [a for a, _ in axes], [int(n) for _, n in axes]
        ids = np.arange(math.prod(dims))
        if found.group(2):  # the devices' order over the mesh
            ids = _iota(found.group(2), found.group(3)).reshape(-1)
        kept = [names.index(a) for a in re.findall(r"'(\w+)'", found.group(4))]
        rest = [i for i in range(len(dims)) if i not in kept]
        grid = ids.reshape(dims).transpose(rest + kept)
        return grid.reshape(-1, math.prod(dims[i] for i in kept)).tolist()
    return None


def _spans_batch(instr: Instr, batch_of: np.ndarray) -> bool:
    """Whether the collective joins devices of different (data, fsdp) coordinates."""
    if "source_target_pairs" in instr.attrs:
        pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", instr.attrs)
        found = re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))
        return any(batch_of[int(a)] != batch_of[int(b)] for a, b in found)
    groups = device_groups(instr.attrs) or [list(range(len(batch_of)))]
    return any(len({int(batch_of[d]) for d in g}) > 1 for g in groups)


def _passed_through(body: list[Instr]) -> set[int]:
    """Indices of the loop-carried tuple that the body returns unchanged."""
    by_name = {i.name: i for i in body}
    param = next(i.name for i in body if i.opcode == "parameter")
    root = next(i for i in body if i.root)
    if root.opcode != "tuple":
        return set()
    kept = set()
    for k, name in enumerate(root.operands):
        instr = by_name.get(name)
        while instr is not None and instr.opcode in ("copy", "bitcast"):
            instr = by_name.get(instr.operands[0])
        if (
            instr is not None
            and instr.opcode == "get-tuple-element"
            and instr.operands == [param]
            and _tuple_index(instr) == k
        ):
            kept.add(k)
    return kept


def _tuple_index(instr: Instr) -> int:
    return int(re.search(r"\bindex=(\d+)", instr.attrs).group(1))


Invariance = bool | list  # of one value, or per element of a tuple


def _all(v: Invariance) -> bool:
    return all(_all(x) for x in v) if isinstance(v, list) else v


class _Walker:
    """Follows computations from a loop body. A value is invariant when it does not depend on
    the loop-carried values that change between iterations of the top-level loop (an inner
    loop's counter is invariant: it runs the same way every iteration)."""

    def __init__(self, comps: dict[str, list[Instr]], batch_of: np.ndarray):
        self.comps, self.batch_of = comps, batch_of
        self.found: list[Collective] = []
        self.memo: dict[tuple, Invariance] = {}

    def enter(self, name: str, params: dict[int, Invariance], record: bool) -> Invariance:
        """The invariance of computation `name`'s root, given its parameters'; with `record`,
        its collectives (and those of what it calls) are added to `found`, once."""
        key = (name, repr(sorted(params.items())), record)
        if key not in self.memo:
            self.memo[key] = False  # a computation never calls itself; this only guards
            values: dict[str, Invariance] = {}
            for instr in self.comps[name]:
                values[instr.name] = self.value(instr, values, params, name, record)
            root = next((i for i in self.comps[name] if i.root), None)
            self.memo[key] = values[root.name] if root else False
        return self.memo[key]

    def loop(self, body: str, condition: str, state: list[bool], record: bool) -> list[bool]:
        """Invariance of an inner loop's carry: an element stays invariant while its update
        in the body is invariant (a fixed point from its initial invariance)."""
        while True:
            root = self.enter(body, {0: state}, False)
            root = root if isinstance(root, list) else [root] * len(state)
            new = [s and _all(r) for s, r in zip(state, root, strict=True)]
            if new == state:
                break
            state = new
        if record:
            self.enter(body, {0: state}, True)
            self.enter(condition, {0: state}, True)
        return state

    def value(self, instr: Instr, values, params, name: str, record: bool) -> Invariance:
        ops, op = instr.operands, instr.opcode
        if op == "parameter":
            return params.get(int(instr.args), False)
        if op in ("constant", "iota"):
            return True
        if op == "get-tuple-element":
            src = values.get(ops[0], False)
            return src[_tuple_index(instr)] if isinstance(src, list) else src
        if op == "tuple":
            return [values.get(o, False) for o in ops]
        callees = _callees(instr)
        if op == "while":
            body = callees["body"][0]
            size = len(next(i for i in self.comps[body] if i.root).operands)
            init = values.get(ops[0], False)
            init = init if isinstance(init, list) else [init] * size
            return self.loop(body, callees["condition"][0], [_all(v) for v in init], record)
        if op == "conditional":
            for k, branch in enumerate(callees.get("branch_computations", [])):
                self.enter(branch, {0: values.get(ops[k + 1], False)}, record)
            for key, k in (("true_computation", 1), ("false_computation", 2)):
                for branch in callees.get(key, []):
                    self.enter(branch, {0: values.get(ops[k], False)}, record)
        else:
            for callee in callees.get("calls", []) + callees.get("to_apply", []):
                self.enter(callee, {k: values.get(o, False) for k, o in enumerate(ops)}, record)
        invariant = op not in ("rng", "rng-bit-generator", "custom-call") and all(
            _all(values.get(o, False)) for o in ops
        )
        kind = _kind(op)
        if kind is not None and record:
            op_name = re.search(r'op_name="([^"]*)"', instr.attrs)
            self.found.append(
                Collective(
                    kind=kind,
                    shape=instr.shape,
                    bytes=_result_bytes(instr.shape, op),
                    invariant=invariant,
                    batch_axes=_spans_batch(instr, self.batch_of),
                    op_name=op_name.group(1) if op_name else "",
                    computation=name,
                )
            )
        return invariant


def _kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in KINDS else None


def loop_collectives(text: str, mesh: Mesh, loop: re.Pattern = TOP_LOOP) -> list[Collective]:
    """Every collective inside the bodies (and conditions) of the while loops whose metadata
    matches `loop` (default: a jitted function's own top-level lax.while_loop, the sampler's
    decode loop), with everything they call. Device ids in the HLO are positions in
    mesh.devices.flat (the compiled program's device assignment)."""
    comps = parse_computations(text)
    coords = np.stack(np.unravel_index(np.arange(mesh.devices.size), mesh.devices.shape), -1)
    batch_axes = [mesh.axis_names.index(a) for a in ("data", "fsdp") if a in mesh.axis_names]
    batch_of = (
        np.ravel_multi_index(coords[:, batch_axes].T, [mesh.devices.shape[a] for a in batch_axes])
        if batch_axes
        else np.zeros(len(coords), int)
    )
    walker = _Walker(comps, batch_of)
    loops = [i for c in comps.values() for i in c if i.opcode == "while" and loop.search(i.attrs)]
    if not loops:
        raise ValueError("no while loop matching the pattern in the HLO text")
    for instr in loops:
        # What enters the loop is taken as invariant; the body decides what stays so.
        callees = _callees(instr)
        body = comps[callees["body"][0]]
        size = len(next(i for i in body if i.root).operands)
        state = [k in _passed_through(body) for k in range(size)]
        walker.enter(callees["body"][0], {0: state}, True)
        walker.enter(callees["condition"][0], {0: state}, True)
    return walker.found


def summary(found: Sequence[Collective]) -> dict:
    """Counts and bytes per decode step: all collectives, those of loop-invariant values (weight
    gathers), and those across the batch axes."""
    gathers = [c for c in found if c.invariant and c.kind != "all-reduce"]
    across = [c for c in found if c.batch_axes]
    return {
        "collectives": len(found),
        "collective_bytes": sum(c.bytes for c in found),
        "invariant_gathers": len(gathers),
        "invariant_gather_bytes": sum(c.bytes for c in gathers),
        "batch_axis_collectives": len(across),
        "batch_axis_bytes": sum(c.bytes for c in across),
        "by_kind": {k: sum(c.kind == k for c in found) for k in KINDS},
    }
