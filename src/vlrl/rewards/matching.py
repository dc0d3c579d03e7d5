"""Does a predicted answer equal the ground truth? Multiple choice, yes/no, math, or plain text.

The prediction is untrusted model text. Nothing here evaluates it: math goes through math-verify's
parser (LaTeX grammar to unevaluated sympy trees; its plain-expression path admits only digits and
operators), and three guards keep sympy from running away before `verify` evaluates anything:
answers over MAX_MATH_CHARS are compared as strings only, parsed trees whose numbers could exceed
MAX_DIGITS digits (`9^{9^{9}}`, `(10^6)!`) are rejected without being evaluated, and the whole check
runs under a MATH_TIMEOUT_S deadline (see deadline.py for what that can and cannot stop).

math-verify is built to find an answer somewhere in a response, so it reads "3 or more" as 3,
"4 = 3" as 3 (the last side) and "300\\%" as 3. An `<answer>` tag holds the answer itself, so
`math_equal` first takes what the answer states (`stated_maths`): a leading "the answer is", `$`
and a `\\boxed{}` are unwrapped, a trailing unit of measurement may be dropped, a percent sign
is dropped without scaling (as a benchmark's "what percentage" answer is written), every side of
an equation that is not a variable's name must equal the truth, and an answer with a word in it
(anything but a function name) is prose, not maths, and matches only as text.
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
# A cue before the answer inside the tag: "The answer is 3.", "Final answer: (B)".
_CUE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
# A letter in any case and bracket style, "B", "(b)", "[B]", "b.", "B:", "B)" alone, or followed
# by text after a bracket or stop: "(B) text", "b. text", "B: text", "[B] text"; a bare letter
# before text ("A cat") is an article, not a label.
_LETTER = re.compile(
    r"[(\[]?([A-Za-z])[)\]]?[.:]?|(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])[.:)])\s.*", re.DOTALL
)
_OWN_LABEL = re.compile(r"[(\[]?([A-Za-z])(?:[)\]]|[.:])\s*")
_YES_NO = {"yes": True, "true": True, "no": False, "false": False}
_MATHS = re.compile(r"[\d\\^=+*/]")
_BOX_COMMANDS = ("\\boxed{", "\\fbox{")
# Units of measurement a numeric answer may end with ("3 cm^2", "5 km/h", "3\text{ cm}"); a closed
# list, since an open one ("any word") lets "3 wrong" pass for 3.
_UNIT_NAME = (
    r"(?:(?:sq\.?|square|cubic|cu\.?)\s+)?(?:mm|cm|dm|km|m|in|inch(?:es)?|ft|feet|foot|yd|yards?|mi|miles?"
    r"|(?:milli|centi|kilo)?met(?:er|re)s?|mg|g|kg|(?:kilo)?grams?|lbs?|pounds?|oz|ounces?|tons?|tonnes?"
    r"|ml|mL|l|L|lit(?:er|re)s?|gallons?|ms|s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?|days?|weeks?"
    r"|months?|years?|mph|kph|rad|radians?|deg|degrees?|dollars?|cents?|euros?|units?)"
)
_UNIT_ONE = rf"(?:\\(?:text|mathrm)\{{\s*{_UNIT_NAME}\s*\}}|{_UNIT_NAME})(?:\^\{{?[23]\}}?|[²³])?"
_UNIT = re.compile(rf"(?:\s|\\[,;! ])*{_UNIT_ONE}(?:\s*/\s*{_UNIT_ONE})?\s*$")
_PERCENT = re.compile(r"\s*(?:\\?%|\\text\{\s*\\?%\s*\}|percent|per\s+cent)\s*$", re.IGNORECASE)
# A word standing alone ("or", "more", "wrong"), after LaTeX commands are removed; letters next to
# digits or other letters are a product of variables ("2xy").
_COMMAND = re.compile(r"\\(?:begin|end)\{[^{}]*\}|\\[A-Za-z]+")
_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2,}(?![A-Za-z0-9])")
_FUNCTION = re.compile(
    r"(?:arc)?(?:sin|cos|tan)h?|cot|sec|csc|log|ln|lg|exp|lim|max|min|gcd|lcm|det|mod|sqrt|pi|inf|infty",
    re.IGNORECASE,
)
# What an equation may name on its other side: "x", "AB", "x_1", "f(2)", "\theta".
_NAME = re.compile(
    r"[A-Za-z]+(?:_\{?\w+\}?)?(?:\([^()=]*\))?"
    r"|\\(?:alpha|beta|gamma|delta|epsilon|theta|lambda|mu|phi|psi|omega|sigma|rho|tau)(?:_\{?\w+\}?)?"
)


def _unwrap(text: str) -> str:
    """Strip whitespace, a leading answer cue, a final period, `$`, and one `\\boxed{}` / `\\text{}`."""
    text = _SPACES.sub(" ", str(text)).strip()
    cue = _CUE.match(text)
    text = text[cue.end() :] if cue else text
    text = text.rstrip(".").strip().strip("$").strip()
    inner = _WRAPPER.fullmatch(text)
    return inner.group(1).strip() if inner else text


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if none.

    >>> last_boxed("so \\\\boxed{1} or rather \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind(command) + len(command) if command in text else -1 for command in _BOX_COMMANDS)
    if start < 0:
        return None
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
    return None  # unbalanced: the response was cut off inside the box


def normalize(text: str) -> str:
    """Text for string comparison: unwrapped, lower case, single spaces, no final period.

    >>> normalize("  $\\\\boxed{The  Cat.}$ ")
    'the cat'
    """
    return _unwrap(text).rstrip(".").strip().lower()


def _option_texts(options: Sequence[str]) -> list[str]:
    """Normalised option texts; options may carry their own labels ("B. dog"), which are dropped."""
    texts = []
    for i, option in enumerate(options):
        own = _OWN_LABEL.match(str(option))
        labelled = own and own.group(1).upper() == chr(65 + i)
        texts.append(normalize(str(option)[own.end() :] if labelled else option))
    return texts


def choice_index(text: str, options: Sequence[str]) -> int | None:
    """Which option `text` names: by letter ("b", "(B)", "[B] dog"), by an option's own text, or
    as the one option equal to it as maths ("1/2" for "\\frac{1}{2}"); None if none or ambiguous.

    >>> choice_index("[d]", list("pqrs")), choice_index("$2 \\pi$", ["\\pi", "2\\pi"])
    (3, 1)
    """
    label = _LETTER.fullmatch(_unwrap(text))
    if label:
        index = ord(next(g for g in label.groups() if g).upper()) - ord("A")
        if index < len(options):
            return index
    texts = _option_texts(options)
    wanted = normalize(text)
    if wanted in texts:
        return texts.index(wanted)
    if not _MATHS.search(wanted):
        return None
    equal = [i for i, t in enumerate(texts) if _MATHS.search(t) and math_equal(text, t)]
    return equal[0] if len(equal) == 1 else None


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


def _no_percent(text: str) -> str:
    return _PERCENT.sub("", text)


def _prose(text: str) -> bool:
    return any(not _FUNCTION.fullmatch(w) for w in _WORD.findall(_COMMAND.sub(" ", text)))


def stated_maths(pred: str, gold: str) -> list[list[str]]:
    """What an answer asserts equals `gold`: per side, its readings (with and without a unit).

    [] when it asserts nothing comparable: prose, or an equation whose sides are all names. Sides
    are split only when the truth is not itself an equation.

    >>> stated_maths("The answer is $x = 3\\\\text{ cm}$.", "3"), stated_maths("3 or more", "3")
    ([['3']], [])
    >>> stated_maths("4 = 3", "3"), stated_maths("300\\\\%", "3"), stated_maths("3 m", "3")
    ([['4'], ['3']], [['300']], [['3', '3 m']])
    """
    text = _unwrap(pred)
    boxed = last_boxed(text)
    text = _no_percent(_unwrap(boxed) if boxed is not None else text)
    sides = [text] if "=" in gold else [s.strip() for s in text.split("=")]
    if len(sides) > 1:
        sides = [s for s in sides if not _NAME.fullmatch(s)]
    readings = [
        [r for r in dict.fromkeys((_UNIT.sub("", s).strip(), s)) if r and not _prose(r)] for s in sides
    ]
    return [] if not readings or not all(readings) else readings


def math_equal(pred: str, gold: str) -> bool:
    """Mathematical equality by math-verify of what `pred` states (see `stated_maths`), bounded in
    size and time; False when unsure.

    >>> math_equal("\\\\frac{6}{2}", "3"), math_equal("3 cm^2", "3"), math_equal("9^{9^{9^{9}}}", "9")
    (True, True, False)
    >>> math_equal("3 or more", "3"), math_equal("4 = 3", "3"), math_equal("300\\\\%", "3")
    (False, False, False)
    """
    if len(pred) > MAX_MATH_CHARS:
        return False
    gold = _no_percent(_unwrap(gold))
    try:
        with deadline(MATH_TIMEOUT_S):
            truth = _parse(gold)
            return bool(truth) and _all_sides_equal(stated_maths(pred, gold), truth)
    except RewardTimeout:
        return False


def _all_sides_equal(sides: list[list[str]], truth: list) -> bool:
    return bool(sides) and all(any(_verified(r, truth) for r in readings) for readings in sides)


def _verified(reading: str, truth: list) -> bool:
    predicted = _parse(reading)
    return bool(predicted) and not _too_big(predicted) and verify(truth, predicted, timeout_seconds=None)


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
        truth = choice_index(gold, choices)
        if truth is None:  # a truth that names no option: the data is off, compare as text
            return normalize(pred) == normalize(gold)
        return choice_index(pred, choices) == truth
    if normalize(pred) == normalize(gold):
        return True
    if normalize(gold) in _YES_NO:
        first = normalize(pred).split(" ", 1)[0].strip(".,;:!")
        return _YES_NO.get(first) == _YES_NO[normalize(gold)]
    return bool(_MATHS.search(gold)) and math_equal(pred, gold)
