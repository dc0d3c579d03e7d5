"""accuracy and hfrrf: answer extraction, multiple choice, yes/no, math, text."""

import pytest

from vlrl.rewards import REWARDS

accuracy, hfrrf = REWARDS["accuracy"], REWARDS["hfrrf"]


def score(answer_text, truth, choices=None):
    return accuracy([f"<think>t</think><answer>{answer_text}</answer>"], answer=[truth], choices=[choices])[0]


OPTIONS = ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "prediction",
    [
        "B",
        "(B)",
        "B.",
        "B)",
        "B:",
        "B) dog",
        "B. dog",
        "(B) dog",
        "dog",
        "  DOG ",
        "Dog.",
        "\\boxed{B}",
        "$B$",
        "The answer is B.",  # a cue inside the tag is read as in free text, for every kind of answer
    ],
)
@pytest.mark.parametrize("truth", ["B", "dog"])
def test_choice_right(prediction, truth):
    assert score(prediction, truth, OPTIONS) == 1.0


@pytest.mark.parametrize(
    "prediction",
    [
        "A",
        "(C)",
        "cat",
        "D",  # no option D
        "A cat",  # an article, not a label
        "dog or cat",
        "",
    ],
)
def test_choice_wrong(prediction):
    assert score(prediction, "B", OPTIONS) == 0.0


@pytest.mark.parametrize(
    "prediction", ["d", "(d)", "d.", "D)", "[D]", "[d]", "d: fish", "(d) fish", "[D] fish"]
)
@pytest.mark.parametrize("truth", ["D", "(d)", "fish"])
def test_choice_letters_in_any_case_and_bracket_style(prediction, truth):
    assert score(prediction, truth, ["cat", "dog", "bird", "fish"]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "options", "truth"),
    [
        ("$2 \\pi$", ["\\pi", "2\\pi"], "B"),
        ("2\\pi", ["\\pi", "$2 \\pi$"], "B"),
        ("1/2", ["\\frac{1}{3}", "\\frac{1}{2}"], "B"),
        ("\\frac{1}{2}", ["1/3", "1/2"], "1/2"),  # the truth as an option's text
        ("$8: 5$", ["5:8", "8:5"], "B"),
        ("30^\\circ", ["60°", "30°"], "B"),
    ],
)
def test_choice_texts_compare_as_maths(prediction, options, truth):
    assert score(prediction, truth, options) == 1.0


def test_choice_maths_matching_two_options_is_no_answer():
    assert score("0.5", "A", ["1/2", "\\frac{2}{4}"]) == 0.0
    assert score("0.5", "B", ["1/2", "\\frac{2}{4}"]) == 0.0


def test_choice_options_with_their_own_labels():
    assert score("dog", "B", ["A. cat", "B. dog"]) == 1.0
    assert score("B", "dog", ["(A) cat", "(B) dog"]) == 1.0
    assert score("cat", "B", ["A. cat", "B. dog"]) == 0.0
    assert score("dog", "B", ["a) cat", "[b] dog"]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "truth", "expected"),
    [
        ("yes", "Yes", 1.0),
        ("Yes.", "yes", 1.0),
        ("TRUE", "yes", 1.0),
        ("Yes, there are two cats.", "yes", 1.0),
        ("no", "yes", 0.0),
        ("False", "no", 1.0),
        ("No, only one.", "no", 1.0),
        ("maybe", "no", 0.0),
        ("yes", True, 1.0),  # a boolean truth from JSON
    ],
)
def test_yes_no(prediction, truth, expected):
    assert score(prediction, truth, None) == expected


@pytest.mark.parametrize(
    ("prediction", "truth"),
    [
        ("3", "3"),
        ("3.0", "3"),
        ("\\frac{6}{2}", "3"),
        ("6/2", "3"),
        ("\\boxed{3}", "3"),
        ("The total is \\boxed{3}.", "3"),
        ("$3$", "3"),
        ("3 cm", "3"),
        ("3\\text{ cm}", "3"),
        ("3 cm^2", "3"),
        ("5 km/h", "5"),
        ("3", 3),  # numeric truth
        ("3", 3.0),
        ("0.5", "\\frac{1}{2}"),
        ("1/2", "0.5"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("50\\%", "50"),  # the percent sign dropped, the number kept as written
        ("50", "50\\%"),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
        ("1,000", "1000"),
        ("x = 2", "2"),
        ("2**3", "8"),
    ],
)
def test_math_equal(prediction, truth):
    assert score(prediction, truth) == 1.0


@pytest.mark.parametrize(
    ("prediction", "truth"),
    [("4", "3"), ("\\frac{7}{2}", "3"), ("3x", "3"), ("-3", "3"), ("0.6", "\\frac{1}{2}"), ("three", "3")],
)
def test_math_unequal(prediction, truth):
    assert score(prediction, truth) == 0.0


@pytest.mark.parametrize(
    "prediction",
    [
        "3 or more",  # trailing words: a hedge, not the number
        "3 or less",
        "3 wrong",
        "3 apples",  # a count noun is a word too; only units of measurement are dropped
        "x = 3 \\text{ or } x = 4",
        "4 = 3",  # an equation whose sides differ
        "\\frac{6}{2} = 4",
        "x = y",  # names on both sides: nothing stated
        "300\\%",  # not silently scaled to 3
        "300%",
        "3 wrong \\boxed{4}",  # the box is what the answer states
    ],
)
def test_answers_that_say_more_than_the_number_are_wrong(prediction):
    assert score(prediction, "3") == 0.0


@pytest.mark.parametrize(
    "prediction",
    [
        "$3$",
        "\\(3\\)",
        "\\boxed{3}",
        "3.0",
        "3.",
        "x = 3",
        "AB = 3",
        "\\frac{6}{2} = 3",  # every side equal to the truth
        "The answer is 3.",
        "Final answer: $3$",
        "3\\,\\text{cm}^2",
        "3 m",
        "30 wrong \\boxed{3}",
    ],
)
def test_plain_statements_of_the_number_are_right(prediction):
    assert score(prediction, "3") == 1.0


def test_percentages_compare_unscaled():
    assert score("0.5", "50\\%") == 0.0
    assert score("50\\%", "0.5") == 0.0
    assert score("50 percent", "50") == 1.0


def test_an_equation_truth_compares_whole():
    assert score("y = 2x + 1", "y = 1 + 2x") == 1.0
    assert score("y = 2x", "y = 1 + 2x") == 0.0


def test_text_answers_compare_as_normalised_strings():
    assert score("Red.", "red") == 1.0
    assert score("the  red car", "The red car") == 1.0
    # Parsed as maths, "der" and "red" would be the same product of symbols d*e*r.
    assert score("der", "red") == 0.0


def test_last_answer_counts():
    both = "<think>t</think><answer>4</answer> wait <answer>3</answer>"
    assert accuracy([both], answer=["3"]) == [1.0]
    assert accuracy([both], answer=["4"]) == [0.0]


def test_missing_or_empty_answer_scores_zero():
    assert (
        accuracy(["3", "<answer>3", "<answer></answer>", "<answer>  </answer>"], answer=["3"] * 4)
        == [0.0] * 4
    )


def test_not_applicable_is_none():
    boxes = [[10, 20, 30, 40]]
    assert accuracy(["<answer>[10, 20, 30, 40]</answer>", "<answer>3</answer>"], answer=[boxes, None]) == [
        None,
        None,
    ]


def test_hfrrf_needs_format_and_answer():
    completions = [
        "<think>1+2</think><answer>3</answer>",  # both right
        "<answer>3</answer>",  # right answer, bad format
        "<think>1+2</think><answer>4</answer>",  # good format, wrong answer
        "<think>box</think><answer>[1, 2]</answer>",  # grounding: not applicable
    ]
    assert hfrrf(completions, answer=["3", "3", "3", [1, 2]]) == [1.0, 0.0, 0.0, None]
