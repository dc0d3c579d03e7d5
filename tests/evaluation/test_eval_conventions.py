"""Each benchmark's answer conventions, on cases written from its documented rules.

MathVista: evaluation/calculate_score.py (normalize_extracted_answer + exact match).
MMMU: mmmu/utils/eval_utils.py (parse_multi_choice_response, parse_open_response, eval_open).
MathVerse: exact match, then math equivalence (math-verify) for free-form answers.
math_verify: the training accuracy reward itself.
"""

from __future__ import annotations

import pytest

from vlrl.data.sample import Sample
from vlrl.evaluation.benchmarks import BENCHMARKS, get_benchmark
from vlrl.rewards import REWARDS


def judge(benchmark: str, text: str, sample: Sample) -> tuple[str | None, float | None]:
    bench = BENCHMARKS[benchmark]
    extracted = bench.extract(text, sample)
    return extracted, bench.score(extracted, sample)


def mathvista(answer, answer_type="text", choices=None, precision=None) -> Sample:
    question_type = "multi_choice" if choices else "free_form"
    extra = {"question_type": question_type, "answer_type": answer_type, "precision": precision}
    return Sample("mv", "q", answer, choices=choices, extra=extra)


ANIMALS = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    ("text", "right"),
    [
        ("<think>it barks</think><answer>B</answer>", True),  # a letter names its choice
        ("<answer>(B)</answer>", True),
        ("<answer>(b) dog</answer>", True),  # "(x)" read as the letter, upper-cased
        ("<answer>dog</answer>", True),  # the choice text itself
        ("<answer>a dog</answer>", True),  # any other text: the most similar choice (edit distance)
        ("<answer>C</answer>", False),
        ("The answer is (B).", True),  # free text: the "answer is" cue
        ("dog", True),  # free text that is a choice (MathVista's `response in choices` rule)
        ("I am not sure.", False),  # states nothing: no answer, not a random choice
        ("<answer> </answer>", False),  # empty: no answer, not the most similar (shortest) choice
    ],
)
def test_mathvista_multiple_choice(text, right):
    _, score = judge("mathvista", text, mathvista("dog", choices=ANIMALS))
    assert score == float(right)


@pytest.mark.parametrize(
    ("text", "extracted"),
    [
        ("B", "B"),  # a bare letter, no cue
        ("b.", "B"),
        ("(B) dog, since it barks", "B"),  # a leading label
        ("B. dog", "B"),
        ("Looking at the picture, the best option is (B).", "B"),  # a sentence naming (B)
        ("Not (A): I would go with (B).", "B"),  # the last one named
        ("Not (E), which is no option.", None),
    ],
)
def test_mathvista_multiple_choice_without_a_cue(text, extracted):
    got, score = judge("mathvista", text, mathvista("dog", choices=ANIMALS))
    assert (got, score) == (extracted, float(extracted == "B"))


@pytest.mark.parametrize(
    ("text", "truth", "right"),
    [
        ("<answer>No, the left bar is not taller than the right one.</answer>", "No", True),  # begins with it
        ("<answer>No, the left bar is not taller than the right one.</answer>", "Yes", False),
        ("<answer>There is no such bar, so the claim is false.</answer>", "Yes", False),  # no answer
        ("<answer>There is no such bar, so the claim is false.</answer>", "No", False),
        ("<answer>Yess</answer>", "Yes", True),  # close: a typo
    ],
)
def test_mathvista_sentences_are_not_mapped_to_the_nearest_choice(text, truth, right):
    _, score = judge("mathvista", text, mathvista(truth, choices=["Yes", "No"]))
    assert score == float(right)


@pytest.mark.parametrize(
    ("text", "answer", "answer_type", "precision", "extracted", "right"),
    [
        ("<answer>3</answer>", "3", "integer", None, "3", True),
        ("<answer>3 cm</answer>", "3", "integer", None, "3", True),  # a unit: its number
        ("<answer>3.0</answer>", "3", "integer", None, "3.0", True),  # str(int(float(x)))
        ("<answer>3.7</answer>", "3", "integer", None, "3.7", True),  # int() truncates, as MathVista's
        ("There are 4 red and 3 blue, so 7 balls.", "7", "integer", None, "7", True),  # last number
        ("so \\boxed{12}", "12", "integer", None, "12", True),  # LaTeX box
        ("<answer>$\\boxed{1,250}$</answer>", "1250", "integer", None, "1250", True),
        ("The answer is 3.50", "3.5", "float", 1, "3.50", True),  # round to `precision` digits
        ("<answer>3.54</answer>", "3.5", "float", 1, "3.54", True),
        ("<answer>3.56</answer>", "3.5", "float", 1, "3.56", False),
        ("<answer>1.449</answer>", "1.45", "float", 2, "1.449", True),
        ("<answer>1.449</answer>", "1.45", "float", None, "1.449", True),  # no precision: the truth's digits
        ("<answer>half</answer>", "0.5", "float", 1, None, False),  # no number: no answer
        ("<answer>[1,2]</answer>", "[1, 2]", "list", None, "[1,2]", True),  # spacing inside a list
        ("<answer>[2, 1]</answer>", "[1, 2]", "list", None, "[2, 1]", False),
        ("<answer>Yes</answer>", "Yes", "text", None, "Yes", True),
        ("<answer>yes</answer>", "Yes", "text", None, "yes", False),  # exact match, as MathVista's
    ],
)
def test_mathvista_free_form(text, answer, answer_type, precision, extracted, right):
    got, score = judge("mathvista", text, mathvista(answer, answer_type, precision=precision))
    assert (got, score) == (extracted, float(right))


def mmmu_mc(answer="B") -> Sample:
    return Sample("mm", "q", answer, choices=ANIMALS, extra={"question_type": "multiple-choice"})


@pytest.mark.parametrize(
    ("text", "extracted"),
    [
        ("<answer>B</answer>", "B"),
        ("<answer>(B)</answer>", "B"),
        ("<answer>dog</answer>", "B"),  # exactly an option's text (vlrl's addition; MMMU: random)
        ("<answer>B.</answer>", "B"),  # punctuation stripped at the ends
        ("The picture shows (A) no, rather (B).", "B"),  # several: the one mentioned last
        ("Looking closely at the animal it is clearly a dog", "B"),  # option text, > 5 words
        ("I would say D here", "D"),  # " D " as a word
        ("Hard to tell.", None),  # MMMU would pick a random letter; we give no answer
    ],
)
def test_mmmu_multiple_choice(text, extracted):
    got, score = judge("mmmu", text, mmmu_mc())
    assert got == extracted
    assert score == float(extracted == "B")


@pytest.mark.parametrize(
    ("text", "answer", "right"),
    [
        ("The answer is 3.50", "3.5", True),  # numbers compare rounded to 2 places
        ("Adding up.\nSo the total is 1,000", "1000", True),
        ("<answer>12 apples</answer>", "12", True),  # the numbers in the answer
        ("It is the city of Paris.", "Paris", True),  # text: the truth occurs in a key phrase
        ("Therefore x = 7", "['7', '7.0']", True),  # several acceptable answers (a list literal)
        ("<answer>\\frac{1}{2}</answer>", "0.5", False),  # MMMU has no maths equivalence
        ("The answer is 4", "3.5", False),
    ],
)
def test_mmmu_open(text, answer, right):
    _, score = judge("mmmu", text, Sample("mm", "q", answer, extra={"question_type": "open"}))
    assert score == float(right)


def mmmu_open(answer: str) -> Sample:
    return Sample("mm", "q", answer, extra={"question_type": "open"})


@pytest.mark.parametrize(
    "text",
    [
        "the value is 3 = 4\ndone",  # a key phrase with "=", which a second parse splits again
        "x is 2\nthus y is 3 so z = 4",
        "The answer is 3.50.\nThat is all.",
        "so it is 1,000 or is it\n= 3",
        "<answer>therefore 3\nso 4</answer>",
        "no indicator here: 3 and 4",
    ],
)
@pytest.mark.parametrize("answer", ["3", "4", "3.5", "1000"])
def test_mmmu_open_answer_is_parsed_once(text, answer):
    # extract-then-score gives what MMMU's parse_open_response + eval_open give on the response.
    from vlrl.evaluation.mmmu import eval_open, parse_open_response
    from vlrl.rewards.tags import last_answer

    sample = mmmu_open(answer)
    response = last_answer(text) or text
    assert judge("mmmu", text, sample)[1] == float(eval_open(answer, parse_open_response(response)))


def test_mmmu_open_answer_keeps_candidates_a_second_parse_would_drop():
    # Key phrase "3 = 4" (after "is "); parsed again as the last line, "=" would cut it to "4".
    assert judge("mmmu", "the value is 3 = 4\ndone", mmmu_open("3")) == ("3 = 4", 1.0)


@pytest.mark.parametrize(
    ("text", "right"),
    [
        ("The answer is 160m", False),  # MMMU's `\d+\b`: a number glued to a word is no number
        ("The answer is 160 m", True),
        ("The answer is 1.5m", True),  # decimals have no boundary in MMMU's pattern
    ],
)
def test_mmmu_numbers_end_at_a_word_boundary(text, right):
    gold = "1.5" if "1.5" in text else "160"
    assert judge("mmmu", text, mmmu_open(gold))[1] == float(right)


@pytest.mark.parametrize("content", ["A. cat", "a) cat", "[A] cat", "(a)", "cat", "A"])
def test_mmmu_answer_tag_reads_as_the_training_reward(content):
    text = f"<think>t</think><answer>{content}</answer>"
    reward = REWARDS["accuracy"]([text], answer=["A"], choices=[ANIMALS])[0]
    assert judge("mmmu", text, mmmu_mc("A")) == ("A", reward) == ("A", 1.0)


MATHVERSE_MC = Sample(
    "mvs", "Find the angle.\nChoices:\nA:30°\nB:60°\nC:90°", "B", extra={"question_type": "multi-choice"}
)


@pytest.mark.parametrize(
    ("text", "extracted", "right"),
    [
        ("<answer>B</answer>", "B", True),
        ("<answer>(B) 60°</answer>", "B", True),
        ("<answer>B: 60°</answer>", "B", True),
        ("<answer>60°</answer>", "B", True),  # an option's text from the question's Choices block
        ("The answer is C.", "C", False),
        ("no idea", None, False),
    ],
)
def test_mathverse_multi_choice(text, extracted, right):
    assert judge("mathverse", text, MATHVERSE_MC) == (extracted, float(right))


@pytest.mark.parametrize(
    ("text", "answer", "right"),
    [
        ("<answer>5</answer>", "5", True),
        ("<answer>\\frac{1}{2}</answer>", "0.5", True),  # LaTeX vs decimal: math-verify
        ("The answer is 3.50", "3.5", True),
        ("<answer>5 cm</answer>", "5", True),  # a unit after the number
        ("<answer>60</answer>", "60°", True),
        ("so \\boxed{2\\sqrt{3}}", "\\sqrt{12}", True),
        ("<answer>3.46</answer>", "2\\sqrt{3}", False),  # an approximation is not the value
        ("<answer>6</answer>", "5", False),
    ],
)
def test_mathverse_free_form(text, answer, right):
    _, score = judge("mathverse", text, Sample("mvs", "q", answer, extra={"question_type": "free-form"}))
    assert score == float(right)


@pytest.mark.parametrize("benchmark", ["mathvista", "mmmu", "mathverse", "math_verify"])
def test_last_answer_tag_wins_over_earlier_tags_and_free_text(benchmark):
    extra = {"question_type": "free_form", "answer_type": "integer"}
    if benchmark == "mmmu":
        extra = {"question_type": "open"}
    if benchmark == "mathverse":
        extra = {"question_type": "free-form"}
    sample = Sample("s", "q", "7", extra=extra)
    text = "The answer is 5. <answer>6</answer> wait <answer>7</answer>"
    assert judge(benchmark, text, sample) == ("7", 1.0)


def test_math_verify_is_the_training_accuracy_reward():
    completions = [
        "<think>6/2</think><answer>\\frac{6}{2}</answer>",
        "<answer>(B)</answer>",
        "no tags: 3",  # the reward gives untagged text nothing; so does this convention
        "<answer></answer>",
        "<answer>[1, 2, 3, 4]</answer>",
        "<answer>Yes, two.</answer>",
    ]
    answers = ["3", "B", "3", "3", [1, 2, 3, 4], "yes"]
    choices = [None, ["cat", "dog"], None, None, None, None]
    reward = REWARDS["accuracy"](completions, answer=answers, choices=choices)
    ours = [
        judge("math_verify", c, Sample(str(i), "q", a, choices=ch))[1]
        for i, (c, a, ch) in enumerate(zip(completions, answers, choices, strict=True))
    ]
    assert ours == reward == [1.0, 1.0, 0.0, 0.0, None, 1.0]


def test_unknown_benchmark_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown benchmark 'mathvision'.*mathverse, mathvista, mmmu"):
        get_benchmark("mathvision")
