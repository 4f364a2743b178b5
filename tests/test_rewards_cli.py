"""``python -m attnrl_jax.grade`` end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "attnrl_jax.grade", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_grades_and_keeps_input_fields(tmp_path: Path):
    rows = [
        {"id": 1, "response": "<think>\\boxed{1}</think>\\boxed{\\dfrac{1}{2}}", "answer": "0.5"},
        {"id": 2, "response": "no box\u2028here", "answer": "3"},  # U+2028 is not a line end
        {"id": 3, "response": "\\boxed{9.6}", "answer": ["9.60", "9.6 \\AA"]},
        {"id": 4, "response": "\\boxed{(1,2)}", "answer": "\\{1,2\\}"},
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    p = _run("--input", str(inp), "--output", str(out), "--workers", "1", "--timeout", "5")
    assert p.returncode == 0, p.stderr
    got = [json.loads(line) for line in out.read_text().split("\n") if line]
    assert [g["id"] for g in got] == [1, 2, 3, 4]
    assert [g["correct"] for g in got] == [True, False, True, False]
    assert [g["extracted"] for g in got] == ["\\dfrac{1}{2}", None, "9.6", "(1,2)"]
    assert got[1]["reason"] == "no_answer"
    assert got[0]["answer"] == "0.5" and got[2]["answer"] == ["9.60", "9.6 \\AA"]
    assert "n=4 accuracy=0.5000 timeouts=0" in p.stderr


def test_cli_malformed_line_names_it_and_writes_nothing(tmp_path: Path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"response": "\\\\boxed{1}", "answer": "1"}\n\n{"response": "", "answer": 3}\n')
    p = _run("--input", str(inp), "--output", str(out))
    assert p.returncode == 2
    assert f"{inp} line 3:" in p.stderr and "'answer'" in p.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [inp]
    inp.write_text('{"response": "x", "answer": "1"}\n{not json\n')
    p = _run("--input", str(inp), "--output", str(out))
    assert p.returncode == 2 and f"{inp} line 2: invalid JSON" in p.stderr
    assert not out.exists()


def test_cli_reward_switch(tmp_path: Path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"response": "The final answer is $3$.", "answer": "3"}) + "\n")
    verdicts = {}
    for reward in ("hybrid", "boxed"):
        p = _run("--input", str(inp), "--output", str(out), "--workers", "1", "--reward", reward)
        assert p.returncode == 0, p.stderr
        verdicts[reward] = json.loads(out.read_text())["reason"]
    assert verdicts == {"hybrid": "math_verify", "boxed": "no_answer"}
