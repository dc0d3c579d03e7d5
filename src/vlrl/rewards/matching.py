"""Does a predicted answer equal the ground truth? Multiple choice, yes/no, math, or plain text.

The prediction is untrusted model text. Nothing here evaluates it: math goes through math-verify's
parser (LaTeX grammar to unevaluated sympy trees; its plain-expression path admits only digits and
operators), and three guards keep sympy from running away before `verify` evaluates anything:
answers over MAX_MATH_CHARS are compared as strings only, parsed trees whose numbers could exceed
MAX_DIGITS digits (`9^{9^{9}}`, `(10^6)!`) are rejected without being evaluated, and the whole check
runs under a MATH_TIMEOUT_S deadline (see deadline.py for what that can and cannot stop).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from functools import lru_cache

import sympy
from math_verify import parse, verify
from sympy.functions.combinatorial.factorials import CombinatorialFunction

from vlrl.rewards.deadline import RewardTimeout, deadline

MAX_MATH_CHARS = 1000
MAX_DIGITS = 10_000
MATH_TIMEOUT_S = 1.0

# We pass timeout None to math-verify (see deadline.py); drop its one-time warning that says so.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())

_SPACES = re.compile(r"\s+")
_WRAPPER = re.compile(r"\\(?:boxed|text|mathrm)\{(.*)\}", re.DOTALL)
# "B", "(B)", "B.", "B:", "B)" alone, or "(B) text", "B. text", "B: text", "B) text".
_LETTER = re.compile(r"\(?([A-Z])\)?[.:]?|(?:\(([A-Z])\)|([A-Z])[.:)])\s.*", re.DOTALL)
_OWN_LABEL = re.compile(r"\(?([A-Z])(?:\)|[.:])\s*")
_YES_NO = {"yes": True, "true": True, "no": False, "false": False}
_MATHS = re.compile(r"[\d\\^=+*/]")
# A number followed by a unit word math-verify keeps as symbols ("3 cm^2" -> 3*c*m**2, "5 km/h").
_NUMBER_UNIT = re.compile(
    r"([-+]?\d[\d,]*(?:\.\d+)?)\s*[A-Za-z]{2,}(?:\^\{?[23]\}?)?(?:/[A-Za-z]+(?:\^\{?[23]\}?)?)?"
)


def _unwrap(text: str) -> str:
    """Strip whitespace, `$`, and one `\\boxed{}` / `\\text{}` around the whole answer."""
    text = _SPACES.sub(" ", str(text)).strip().strip("$").strip()
    inner = _WRAPPER.fullmatch(text)
    return inner.group(1).strip() if inner else text


def normalize(text: str) -> str:
    """Text for string comparison: unwrapped, lower case, single spaces, no final period.

    >>> normalize("  $\\\\boxed{The  Cat.}$ ")
    'the cat'
    """
    return _unwrap(text).rstrip(".").strip().lower()


def _choice_index(text: str, options: Sequence[str]) -> int | None:
    """Which option `text` names: by letter ("B", "(B)", "B) dog") or by the option's own text."""
    text = _unwrap(text)
    label = _LETTER.fullmatch(text)
    if label:
        index = ord(next(g for g in label.groups() if g)) - ord("A")
        if index < len(options):
            return index
    # Options may carry their own labels ("B. dog"); compare the text after them.
    texts = []
    for i, option in enumerate(options):
        own = _OWN_LABEL.match(str(option))
        texts.append(normalize(str(option)[own.end() :] if own and own.group(1) == chr(65 + i) else option))
    wanted = normalize(text)
    return texts.index(wanted) if wanted in texts else None


def _size(expr) -> float:
    """Upper bound on log10 of the largest number sympy may build evaluating `expr`; no evaluation.

    For |e| <= 10**size(e), b**e has at most 10**size(e) * size(b) digits, and n! at most n * log10 n.
    """
    if isinstance(expr, sympy.Rational):
        return math.log10(max(abs(expr.p), abs(expr.q), 1))
    if isinstance(expr, sympy.MatrixBase):
        return sum(_size(e) for e in expr)
    args = getattr(expr, "args", ())
    if isinstance(expr, sympy.Pow):
        exponent = _size(args[1])
        return math.inf if exponent > 6 else 10**exponent * _size(args[0])
    if isinstance(expr, CombinatorialFunction | sympy.gamma):
        n = max(_size(a) for a in args)
        return math.inf if n > 6 else 10**n * n
    return sum(_size(a) for a in args) if args else 1.0


def _too_big(parsed: list) -> bool:
    try:
        return any(_size(p) > MAX_DIGITS for p in parsed if not isinstance(p, str))
    except RecursionError:  # pathologically deep nesting: not a plausible answer either
        return True


@lru_cache(maxsize=4096)
def _parse(text: str) -> list:
    # math-verify finds LaTeX between delimiters; a bare answer ("\frac{1}{2}") gets them added.
    # Except Python's `**`, which its LaTeX grammar misreads ("$9**9**9$" -> 9) and which its
    # plain-expression parser, used without delimiters, reads right.
    as_is = any(d in text for d in ("$", "\\(", "\\[", "\\boxed", "**"))
    return parse(text if as_is else f"${text}$", parsing_timeout=None)


def math_equal(pred: str, gold: str) -> bool:
    """Mathematical equality by math-verify, bounded in size and time; False when unsure.

    >>> math_equal("\\\\frac{6}{2}", "3"), math_equal("3 cm^2", "3"), math_equal("9^{9^{9^{9}}}", "9")
    (True, True, False)
    """
    if len(pred) > MAX_MATH_CHARS:
        return False
    unit = _NUMBER_UNIT.fullmatch(pred.strip())
    pred = unit.group(1) if unit else pred
    try:
        with deadline(MATH_TIMEOUT_S):
            predicted, truth = _parse(pred), _parse(gold)
            if not predicted or not truth or _too_big(predicted):
                return False
            return verify(truth, predicted, timeout_seconds=None)
    except RewardTimeout:
        return False


def answers_match(pred: str, gold, choices: Sequence[str] | None = None) -> bool:
    """Whether the predicted answer text names the ground truth.

    With `choices`, both sides resolve to an option (by letter or by its text). A yes/no truth
    compares with the prediction's first word (yes/true, no/false). Otherwise normalised strings,
    then, when the truth looks mathematical (digits, LaTeX, operators), `math_equal`.

    >>> answers_match("(B)", "B", ["cat", "dog"]), answers_match("Dog", "B", ["cat", "dog"])
    (True, True)
    >>> answers_match("Yes, two cats.", "yes"), answers_match("0.5", "\\\\frac{1}{2}")
    (True, True)
    """
    gold = str(gold)
    if choices:
        truth = _choice_index(gold, choices)
        if truth is None:  # a truth that names no option: the data is off, compare as text
            return normalize(pred) == normalize(gold)
        return _choice_index(pred, choices) == truth
    if normalize(pred) == normalize(gold):
        return True
    if normalize(gold) in _YES_NO:
        first = normalize(pred).split(" ", 1)[0].strip(".,;:!")
        return _YES_NO.get(first) == _YES_NO[normalize(gold)]
    return bool(_MATHS.search(gold)) and math_equal(pred, gold)
