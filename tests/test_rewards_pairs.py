"""Hand-written tricky pairs: (boxed answer, gold, expected correctness)."""

from __future__ import annotations

import pytest

from attnrl_jax.rewards.extract import last_box_run
from attnrl_jax.rewards.math import GradeResult, grade

EQUIVALENT = [
    # fractions
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{1}{2}", "\\frac12"),
    ("\\tfrac{3}{4}", "\\frac{3}{4}"),
    ("1/2", "\\frac{1}{2}"),
    ("\\frac{6}{8}", "\\frac{3}{4}"),
    ("-\\frac{1}{2}", "\\frac{-1}{2}"),
    ("\\frac{-1}{2}", "-0.5"),
    ("\\frac43", "\\frac{4}{3}"),
    ("\\frac{10}{4}", "2.5"),
    ("2\\frac{1}{2}", "\\frac{5}{2}"),
    ("0.25", "\\frac{1}{4}"),
    ("\\frac{1}{3}", "0.33333"),
    # radicals
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("3\\sqrt{13}", "\\sqrt{117}"),
    ("\\sqrt[3]{8}", "2"),
    ("2+\\sqrt{3}", "\\sqrt{3}+2"),
    ("\\frac{8}{\\sqrt[3]{7}}", "\\frac{8\\sqrt[3]{49}}{7}"),
    ("1 \\pm \\sqrt{19}", "1\\pm\\sqrt{19}"),
    # pi and expressions
    ("2\\pi", "\\pi \\cdot 2"),
    ("\\frac{\\pi}{2}", "0.5\\pi"),
    ("12\\pi", "12 \\pi"),
    ("18+2\\pi", "2\\pi+18"),
    ("x^2+2x+1", "(x+1)^2"),
    ("p - q", "-q + p"),
    ("6r^2-4r-24", "2(3r^2-2r-12)"),
    ("\\frac{t}{m}", "t/m"),
    ("n^{2}+1", "n^2+1"),
    ("\\frac{3m}{2}-1", "1.5m-1"),
    ("e^{i\\pi}", "-1"),
    ("\\sin^2 x + \\cos^2 x", "1"),
    ("2 \\cos (\\pi t+\\pi / 3)", "2\\cos(\\pi t + \\frac{\\pi}{3})"),
    ("1+\\sqrt{3}i", "1+i\\sqrt{3}"),
    ("\\log_2 8", "3"),
    # decimals and tolerance
    ("3.14159", "\\pi"),
    ("0.50", "0.5"),
    ("1.000", "1"),
    ("9.60", "9.6"),
    ("2.718281828", "e"),
    # integers, AIME leading zeros
    ("025", "25"),
    ("080", "80"),
    ("007", "7"),
    ("25", "025"),
    ("+5", "5"),
    ("-0", "0"),
    # thousands separators
    ("1,000", "1000"),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100"),  # a MATH-500 gold's spelling
    ("11,111,111,100", "11,\\! 111,\\! 111,\\! 100"),
    ("10,080", "10080"),
    ("10{,}080", "10080"),
    ("1,000,000", "10^6"),
    ("10,\\!080", "10080"),
    ("1\\,000", "1000"),
    # scientific notation
    ("4.4 \\times 10^7", "4.4e7"),
    ("1.70e4", "17000"),
    ("3.3\\times10^{-10}", "3.3e-10"),
    ("7 \\times 10^{37}", "7e37"),
    ("2.75 \\times 10^{11}", "275000000000"),
    ("1.77 \\cdot 10^{-6}", "1.77 \\times 10^{-6}"),
    ("10^{3}", "1000"),
    ("2^{100}", "1267650600228229401496703205376"),
    # percent
    ("62.5\\%", "62.5"),
    ("62.5%", "62.5\\%"),
    ("8 \\%", "8"),
    ("50\\%", "50"),
    # degrees
    ("55^\\circ", "55"),
    ("28.71^{\\circ}", "28.71"),
    ("30°", "30"),
    ("90^{\\circ}", "90^\\circ"),
    ("336^\\circ", "336"),
    # units and \text
    ("12 \\text{ cm}", "12"),
    ("12\\text{ cm}^2", "12"),
    ("5 \\text{ inches}", "5"),
    ("\\$18.90", "18.90"),
    ("18.90 \\text{ dollars}", "18.9"),
    ("4.4677 \\times 10^{14} Hz", "4.4677 \\times 10^{14}"),
    ("2 \\mathrm{~kg}", "2"),
    ("\\text{ellipse}", "ellipse"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),
    ("\\textbf{(B)}", "B"),
    ("(C)", "C"),
    ("\\mbox{odd}", "\\text{odd}"),
    ("100 \\text{ square units}", "100"),
    ("1.5 \\times 10^{3} \\mathrm{~m}", "1500"),
    ("3 \\text{ apples}", "3"),
    ("12\\,\\mathrm{kg}.", "12"),
    ("5\\text{ m}^2", "5"),
    # $ and spacing
    ("$\\frac{5}{2}$", "\\frac{5}{2}"),
    ("\\frac{5}{2}", "$\\frac{5}{2}$"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("3 .", "3"),
    ("\\displaystyle \\frac{1}{2}", "\\frac{1}{2}"),
    ("\\; 7 \\quad", "7"),
    # tuples and intervals, in order with bracket types
    ("(8,-2)", "(8, -2)"),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(0.5, 1)", "(\\frac12, 1)"),
    ("[0, 1)", "[0,1)"),
    ("(5,\\infty)", "(5, \\infty)"),
    ("(-\\infty, 0) \\cup \\{1\\}", "$(-\\infty, 0) \\cup\\{1\\}$."),
    ("[1,2] \\cup [3,4]", "[3,4]\\cup[1,2]"),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]"),
    ("(6,31,-1)", "(6, 31, -1)"),
    ("(\\frac{1}{4}, \\frac{1}{27})", "(0.25, \\frac{1}{27})"),
    # sets unordered
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("\\{-1, 1\\}", "\\left\\{1,-1\\right\\}"),
    ("\\{1,2\\}", "1, 2"),
    # multiple answers (unordered)
    ("1, 2", "2, 1"),
    ("-2,0,2", "$-2,0,2$"),
    ("2, -1, -18", "$-18, -1, 2$"),
    ("3,1,-1,1+\\sqrt{2}, 1-\\sqrt{2}", "$3,1,-1,1+\\sqrt{2}, 1-\\sqrt{2}$"),
    ("(0,2),(0,-2),(4,23),(4,-23)", "(4,-23),(4,23),(0,-2),(0,2)"),
    ("-1,2,-2", "$-1$,$2$,$-2$"),
    ("90, 60", "$90^{\\circ}$,$60^{\\circ}$"),
    ("\\frac{1}{2}, \\sqrt{2}", "\\sqrt{2}, 0.5"),
    # equations
    ("x=3", "3"),
    ("3", "x = 3"),
    ("k = \\frac{1}{2}", "\\frac{1}{2}"),
    ("y = -2x", "y=-2x"),
    ("y = -2x", "-2x"),
    ("f(x)=x^2-2x+2", "g(x)=x^2-2x+2"),
    ("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0"),
    ("x = 1, y = 2", "(1, 2)"),
    ("x \\in [2, 5)", "[2,5)"),
    ("\\pm 2", "2, -2"),
    ("3 \\text{ and } 5", "3, 5"),
    # matrices
    (
        "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}",
        "\\begin{pmatrix}-7\\\\16\\\\5\\end{pmatrix}",
    ),
    (
        "\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix} \\frac12 & 0 \\\\ 0 & 1 \\end{pmatrix}",
        "\\begin{pmatrix} 0.5 & 0 \\\\ 0 & 1 \\end{pmatrix}",
    ),
    # complex numbers
    ("3+4i", "4i+3"),
    ("\\frac{1}{2} - \\frac{i}{2}", "0.5 - 0.5i"),
    # trigonometric functions of degrees: the degree sign converts the argument, not dropped
    ("\\sin 30^\\circ", "\\frac{1}{2}"),
    ("\\sin(30^{\\circ})", "\\frac{1}{2}"),
    ("\\cos 60°", "\\frac{1}{2}"),
    ("\\cos 30^\\circ", "\\frac{\\sqrt{3}}{2}"),
    ("\\tan 45^\\circ", "1"),
    ("\\sin\\left(-30^\\circ\\right)", "-\\frac{1}{2}"),
    ("\\tan^2 60^\\circ", "3"),
    ("2\\sin 30^\\circ\\cos 60^\\circ", "\\frac12"),
    ("\\sin 30^\\circ", "\\sin \\frac{\\pi}{6}"),
    ("\\sin 150^\\circ", "0.5"),
    # repeating decimals are their exact fractions (a truncation gets the usual 1e-4 tolerance)
    ("0.\\overline{3}", "\\frac{1}{3}"),
    ("\\frac{1}{3}", "0.\\overline{3}"),
    ("1.2\\overline{34}", "\\frac{611}{495}"),
    ("0.\\overline{9}", "1"),
    ("0.\\overline{12}", "\\frac{4}{33}"),
    (".\\bar{6}", "\\frac{2}{3}"),
    ("-0.1\\dot{6}", "-\\frac{1}{6}"),
    ("0.\\overline{3}", "0.33333"),  # as \\frac{1}{3} against 0.33333 above
    # answers joined by "or"/"and" are a set of solutions
    ("2 or 3", "2, 3"),
    ("x = 2 \\text{ or } x = 3", "2, 3"),
    ("3 \\text{ or } 2", "2, 3"),
    ("1, 2, or 3", "3, 2, 1"),
    ("2, 3", "2 \\text{ or } 3"),
    ("x=2 \\text{ or } x=3", "x=2, x=3"),
    ("2 \\text{ and } 3", "\\{2, 3\\}"),
]

NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("0.333", "\\frac{1}{3}"),
    ("0.33", "\\frac{1}{3}"),
    ("3.14", "\\pi"),
    ("2\\sqrt{2}", "\\sqrt{2}"),
    ("\\sqrt{3}", "3"),
    ("100000", "100001"),
    ("9999^{9999}", "9999^{9998}"),
    ("2^{100}", "2^{100} + 1"),
    ("123456789", "123456788"),
    ("25", "250"),
    ("025", "250"),
    ("9.62", "9.6"),
    ("1e-7", "2e-7"),
    ("8.224 \\times 10^{-19}", "1.325 \\times 10^{-27}"),  # Math-Verify rounds both to 0
    ("2.88 \\times 10^{-19}", "8.224 \\times 10^{-19}"),
    ("1.5 \\times 10^{-8}", "1.6 \\times 10^{-8}"),
    ("4.5 \\times 10^7", "4.4 \\times 10^7"),
    ("4.4 \\times 10^6", "4.4 \\times 10^7"),
    ("-5", "5"),
    ("x^2+1", "x^2-1"),
    ("2x", "2y"),
    ("p - q", "q - p"),
    ("5", "x + 5"),
    ("x", "1"),
    ("(1,2)", "(2,1)"),
    ("(1,2)", "[1,2]"),
    ("[0,1)", "[0,1]"),
    ("(1,2)", "\\{1,2\\}"),
    ("(1,2)", "1, 2"),
    ("(1,2,3)", "(1,2)"),
    ("1, 2", "1, 2, 3"),
    ("1, 2", "1, 3"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("(2,4)", "(2,\\infty)"),
    ("(5,\\infty)", "[5,\\infty)"),
    ("(-\\infty, 0) \\cup \\{1\\}", "(-\\infty, 0)"),
    ("\\infty", "-\\infty"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1, 2)"),
    ("50\\%", "0.5"),
    ("\\text{Evelyn}", "\\text{Emily}"),
    ("\\text{odd}", "\\text{even}"),
    ("2x", "2y \\text{ s}"),
    ("\\sin 30", "\\frac{1}{2}"),
    ("A", "B"),
    ("x = 3", "x = 4"),
    ("y = 2x", "y = 3x"),
    ("y = 2x", "3x"),
    ("1 \\pm \\sqrt{19}", "1 + \\sqrt{19}"),
    ("10^{3}", "10^{4}"),
    ("e", "2.71"),
    ("i", "-i"),
    ("3+4i", "4+3i"),
    ("\\frac{7}{2}", "72"),
    ("12 \\text{ cm}", "13"),
    ("1,000", "1"),
    ("0", "\\emptyset"),
    ("2", "2, 3"),
    ("\\sqrt{2}/2", "\\sqrt{2}"),
    ("\\sin 30^\\circ", "\\sin 30"),  # degrees are not radians
    ("\\sin 60^\\circ", "\\frac{1}{2}"),
    ("\\sin 30^\\circ", "-\\frac{1}{2}"),
    ("\\sin 30^\\circ", "\\frac{\\sqrt{3}}{2}"),
    ("\\cos 60°", "60"),  # Math-Verify equates these
    ("0.\\overline{3}", "0.3"),
    ("0.\\overline{3}", "0.33"),
    ("0.\\overline{3}", "0.333"),
    ("0.\\overline{9}", "0.9"),
    ("1.2\\overline{34}", "1.234"),
    ("0.\\overline{12}", "\\frac{12}{100}"),
    ("0.1\\overline{2}", "0.\\overline{12}"),
    ("2 or 3", "2"),
    ("2 or 3", "2, 3, 4"),
    ("2 \\text{ or } 4", "2, 3"),
    ("2 or 2", "2, 3"),
    ("1, 2, and 3", "1, 2"),
    ("2 or 3", "(2, 3)"),  # Math-Verify equates these
    ("x = 2 \\text{ or } x = 3", "(2, 3)"),  # a set of solutions, not a point
    ("32, 349", "32349"),  # a comma and a space: two numbers, not thousands
    ("12:00", "1:00"),  # both read as undefined (n/0): undefined equals nothing
    ("x = 1, y = 2", "y = 1, x = 2"),  # labelled items keep their labels
]

CASES = [pytest.param(a, b, True, id=f"eq-{i}") for i, (a, b) in enumerate(EQUIVALENT)] + [
    pytest.param(a, b, False, id=f"ne-{i}") for i, (a, b) in enumerate(NOT_EQUIVALENT)
]


@pytest.mark.parametrize(
    ("answer", "gold"),
    [("2 or 3", "2, 3"), ("x = 2 \\text{ or } x = 3", "2, 3"), ("\\cos 60°", "\\frac{1}{2}")],
)
def test_decided_before_math_verify(answer: str, gold: str):
    """These are our own rules (Math-Verify rejects the degrees one); not left to the fallback."""
    assert grade("\\boxed{" + answer + "}", gold).reason == "sympy"


def test_enough_pairs():
    assert len(CASES) >= 150


@pytest.mark.parametrize(("answer", "gold", "expected"), CASES)
def test_pair(answer: str, gold: str, expected: bool):
    r = grade("Reasoning ... so the answer is \\boxed{" + answer + "}.", gold)
    assert r.correct is expected, r
    assert r.extracted == answer.strip()


# Whole responses for the hybrid reward's rules (rewards/math.py): (response, gold, hybrid verdict,
# boxed-only verdict). Each rule has equal and not-equal cases.
THINK = "<think>Try \\boxed{7} first. Hmm.</think>"
RESPONSES = [
    # several boxes against a multi-part gold: tuple lists, labelled lists, sets, and/or-joined
    ("So \\boxed{(2,2)} and \\boxed{(6,2)}.", "(2, 2), (6, 2)", True, False),
    ("So \\boxed{(2,2)} and \\boxed{(6,2)}.", "(2, 2), (6, 3)", False, False),
    ("So \\boxed{(2,2)} and \\boxed{(6,2)}.", "(2, 2)", False, False),
    ("\\boxed{k = 45} and \\boxed{n = 2}", "k = 45, n = 2", True, False),
    ("\\boxed{k = 45} and \\boxed{n = 2}", "k = 2, n = 45", False, False),  # labels matter
    ("\\boxed{k = 45} and \\boxed{n = 2}", "45, 2", True, False),  # labelled vs bare
    ("\\boxed{k = 45} and \\boxed{n = 2}", "45, 3", False, False),
    ("\\boxed{1}, \\boxed{2}", "x_{1}=1, x_{2}=2", True, False),  # bare vs labelled
    ("\\boxed{1}, \\boxed{3}", "x_{1}=1, x_{2}=2", False, False),
    (THINK + "\\boxed{2} and \\boxed{3}", "\\{2, 3\\}", True, False),
    (THINK + "\\boxed{2} and \\boxed{3}", "\\{2, 3, 4\\}", False, False),
    ("\\boxed{2} and \\boxed{3}", "(2, 3)", False, False),  # a point is not a set of boxes
    ("\\boxed{2} or \\boxed{3}", "2 \\text{ or } 3", True, False),
    ("\\boxed{3}, \\boxed{1}, \\boxed{2}", "1, 2, and 3", True, False),
    ("\\boxed{3}, \\boxed{1}, \\boxed{3}", "1, 2, and 3", False, False),
    ("\\boxed{2}, \\boxed{2} and \\boxed{3}", "2, 3", True, False),  # repeats are one part
    # one gold value: the last box wins (a revised answer)
    ("First \\boxed{3}; no, wait: \\boxed{5}.", "5", True, True),
    ("First \\boxed{3}; no, wait: \\boxed{5}.", "3", False, False),
    ("\\boxed{1,2}", "2", False, False),  # two candidates are not the answer 2
    # percent words
    ("\\boxed{28 pct}", "28\\%", True, True),
    ("\\boxed{28 percentage}", "28\\%", True, True),
    ("\\boxed{28 percent}", "28", True, True),
    ("\\boxed{28\\text{ percent}}", "28\\%", True, True),
    ("\\boxed{28 pct}", "29\\%", False, False),
    ("\\boxed{28 pct}", "0.28", False, False),  # percent signs are dropped, not converted
    # no box: Math-Verify reads the answer from the text (the authors' fallback)
    (THINK + " The final answer is $25$.", "25", True, False),
    (THINK + " The final answer is $\\frac{50}{2}$.", "25", True, False),
    (THINK + " The final answer is $24$.", "25", False, False),
    (THINK + " No answer.", "25", False, False),
    ("\\boxed{7}</think> The final answer is $25$.", "7", False, False),  # only after </think>
    # a gold given in its own boxes: its last box, or its last run of boxes
    ("\\boxed{2} and \\boxed{3}", "\\boxed{2}, \\boxed{3}", True, False),
    ("\\boxed{4}", "\\boxed{4}", True, True),
    ("\\boxed{2}", "\\boxed{1} is wrong, so \\boxed{2}", True, True),
    ("\\boxed{1, 2}", "\\boxed{1} is wrong, so \\boxed{2}", False, False),
    ("\\boxed{1, 2}", "\\(\\boxed{1}\\) and \\(\\boxed{2}\\)", True, True),
    # only a run of boxes is the parts of one answer; other text between boxes is a revision
    ("\\boxed{1}, then I doubt it. \\boxed{2}", "1, 2, 3", False, False),
    # Math-Verify evaluates an unboxed sum of matrices
    (
        "The sum is $\\begin{pmatrix}1 & 2\\end{pmatrix} + \\begin{pmatrix}3 & 4\\end{pmatrix}$",
        "\\begin{pmatrix}4 & 6\\end{pmatrix}",
        True,
        False,
    ),
]


@pytest.mark.parametrize(("response", "gold", "hybrid", "boxed"), RESPONSES)
def test_response_rules(response: str, gold: str, hybrid: bool, boxed: bool):
    assert grade(response, gold).correct is hybrid
    assert grade(response, gold, reward="boxed").correct is boxed


def test_hybrid_reasons_and_extracted_answer():
    r = grade("\\boxed{k = 45} and \\boxed{n = 2}", "45, 2")
    assert (r.reason, r.extracted) == ("multi_box", "n = 2")
    r = grade(THINK + " The final answer is $\\frac{50}{2}$.", "25")
    assert (r.reason, r.extracted) == ("math_verify", "\\frac{50}{2}")  # what Math-Verify read
    assert grade(THINK + " No answer.", "25") == GradeResult(False, None, "no_answer")
    assert grade("\\boxed{24}", "25").reason == "mismatch"  # the last box's verdict is reported


def test_unknown_reward_is_refused():
    with pytest.raises(ValueError, match="reward must be one of"):
        grade("\\boxed{1}", "1", reward="strict")


@pytest.mark.parametrize(
    ("text", "run"),
    [
        ("\\boxed{2}, \\boxed{3} and \\boxed{5}.", ["2", "3", "5"]),
        ("$\\boxed{a}$ \\text{ or } $\\boxed{b}$", ["a", "b"]),
        ("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", ["1", "-2"]),
        ("\\boxed{3}, no, wait: \\boxed{5}", ["5"]),
        ("\\boxed{1} papers and \\boxed{2} bins", ["2"]),
        ("no box", []),
    ],
)
def test_last_box_run(text: str, run: list[str]):
    assert last_box_run(text) == run
