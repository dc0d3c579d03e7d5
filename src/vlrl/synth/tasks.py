"""The synthetic tasks, one table entry each.

A task is a function `(rng, image_size) -> Item`: it samples its scene(s) with the given seeded
RNG and builds the question, the answer and the reasoning steps from them. The reasoning follows
the caption inside `<think>` and must be concrete and correct (it names and counts the objects),
since it is the supervised chain-of-thought target. Adding a task is one function and one line in
`TASKS`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlrl.synth.render import glyph_width
from vlrl.synth.scene import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Obj,
    Scene,
    count_phrase,
    describe,
    place_boxes,
    position,
    random_specs,
    reading_order,
    scaled,
    shape_scene,
)

LETTERS = "ABCD"
DIGIT_HEIGHT = (24, 36)  # for 112-pixel images, like the shape sizes
DIGIT_GAP = 12  # wide enough that two digits side by side never read as one number
GROUNDING_NEGATIVE_RATE = 0.2


@dataclass(frozen=True)
class Item:
    """One generated example before it is written out.

    `scenes` has one scene per image. `steps` are the reasoning sentences that follow the caption
    in the solution. `extra` holds task-specific row fields (`choices`, `answer_text`, `boxes`).
    """

    scenes: list[Scene]
    question: str
    answer: Any
    steps: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    # Whether the caption says where each object is. Counting leaves positions out: they do not
    # help count, and every caption token is one more for a tiny model to learn.
    positions: bool = True


Task = Callable[[random.Random, int], Item]


def answer_text(answer: Any) -> str:
    """The answer as written inside `<answer>`: strings as they are, box lists as JSON."""
    return answer if isinstance(answer, str) else json.dumps(answer)


def _tally(label: str, objs: list[Obj]) -> str:
    """Counting sentence that numbers each match: "Counting the circles: red circle 1, ..."."""
    listed = ", ".join(f"{describe(o)} {i}" for i, o in enumerate(objs, 1)) or "none"
    return f"Counting the {label}: {listed}."


# Counting draws the answer first, uniformly, and builds the scene around it: with counts drawn
# from random scenes, small answers dominate (1 was a third of them) and a model that ignores the
# image can score well by always guessing the common answer.
MAX_SHAPES = 6


CountTarget = tuple[str, list[tuple[str, str]], Callable[[Obj], bool]]


def _count_all(rng: random.Random) -> CountTarget:
    """Every shape: 1-6 of them."""
    return "shape", random_specs(rng, rng.randint(1, MAX_SHAPES)), lambda o: True


def _count_colour(rng: random.Random) -> CountTarget:
    """Shapes of one colour: 0-4 of them among up to 6 shapes."""
    colour = rng.choice(COLOURS)
    k = rng.randint(0, 4)
    others = [c for c in COLOURS if c != colour]
    n_other = rng.randint(1 if k == 0 else 0, MAX_SHAPES - k)
    specs = [(colour, rng.choice(SHAPES)) for _ in range(k)]
    specs += [(rng.choice(others), rng.choice(SHAPES)) for _ in range(n_other)]
    rng.shuffle(specs)
    return f"{colour} shape", specs, lambda o: o["colour"] == colour


def _count_kind(rng: random.Random) -> CountTarget:
    """Shapes of one kind, any colour: 0-4 of them among up to 6 shapes."""
    shape = rng.choice(SHAPES)
    k = rng.randint(0, 4)
    others = [s for s in SHAPES if s != shape]
    n_other = rng.randint(1 if k == 0 else 0, MAX_SHAPES - k)
    specs = [(rng.choice(COLOURS), shape) for _ in range(k)]
    specs += [(rng.choice(COLOURS), rng.choice(others)) for _ in range(n_other)]
    rng.shuffle(specs)
    return shape, specs, lambda o: o["shape"] == shape


COUNT_TARGETS = (_count_all, _count_colour, _count_kind)


def counting(rng: random.Random, image_size: int) -> Item:
    """How many (red / circle / any) shapes among 1-6 shapes, answers spread evenly."""
    return _counting_item(rng, image_size, rng.choice(COUNT_TARGETS)(rng))


def count_shapes(rng: random.Random, image_size: int) -> Item:
    """How many shapes, 1-6 of them: counting without having to tell colours or kinds apart,
    which a tiny model's vision learns first.

    The solution is the caption alone ("There are 4 shapes: a red circle, ..."): with every shape
    counted a tally would only list them again, which doubled the response and so the cost of
    each sample, and the tiny demo model began to count about as early without it.
    """
    return _counting_item(rng, image_size, _count_all(rng), tally=False)


def _counting_item(rng: random.Random, image_size: int, target: CountTarget, tally: bool = True) -> Item:
    noun, specs, match = target
    scene = shape_scene(rng, specs, image_size)
    found = [o for o in scene if match(o)]
    steps = [_tally(f"{noun}s", found), f"So the count is {len(found)}."] if tally else []
    return Item([scene], f"How many {noun}s are in the image?", str(len(found)), steps, positions=False)


def colour_mcq(rng: random.Random, image_size: int) -> Item:
    """Most frequent colour among 3-6 shapes, as one of four lettered colour choices.

    Colours are redrawn until one colour is strictly the most frequent, so exactly one choice is
    right.
    """
    while True:
        specs = random_specs(rng, rng.randint(3, 6))
        counts = Counter(c for c, _ in specs).most_common()
        if len(counts) == 1 or counts[0][1] > counts[1][1]:
            break
    top = counts[0][0]
    choices = rng.sample([c for c in COLOURS if c != top], len(LETTERS) - 1) + [top]
    rng.shuffle(choices)
    letter = LETTERS[choices.index(top)]
    scene = shape_scene(rng, specs, image_size)
    by_colour = ", ".join(f"{c} {n}" for c, n in sorted(counts, key=lambda cn: COLOURS.index(cn[0])))
    steps = [
        f"Counting by colour: {by_colour}.",
        f"The most common colour is {top}.",
        f"{top.capitalize()} is option {letter}.",
    ]
    question = "Which colour is most common among the shapes?"
    return Item([scene], question, letter, steps, {"choices": choices, "answer_text": top})


def digit_sum(rng: random.Random, image_size: int) -> Item:
    """Sum of two digits drawn in black at random places and heights."""
    texts = [str(rng.randint(0, 9)) for _ in range(2)]
    lo, hi = (scaled(h, image_size) for h in DIGIT_HEIGHT)
    heights = [rng.randint(lo, hi) for _ in texts]
    sizes = [(glyph_width(t, h), h) for t, h in zip(texts, heights, strict=True)]
    boxes = place_boxes(rng, lambda: sizes, image_size, gap=DIGIT_GAP)
    objs = [
        {"shape": "digit", "colour": "black", "box": b, "text": t} for t, b in zip(texts, boxes, strict=True)
    ]
    scene = reading_order(objs, image_size)
    a, b = (int(o["text"]) for o in scene)
    steps = [f"The digits are {a} and {b}.", f"{a} + {b} = {a + b}."]
    return Item([scene], "What is the sum of the two digits?", str(a + b), steps)


# Relation words -> (axis, coordinate name, whether the subject has the smaller coordinate).
# y grows downwards, so "above" means a smaller y.
RELATIONS = {
    "to the left of": (0, "x", True),
    "to the right of": (0, "x", False),
    "above": (1, "y", True),
    "below": (1, "y", False),
}


def spatial(rng: random.Random, image_size: int) -> Item:
    """Is shape A <relation> shape B, for two distinct shapes; answers balanced yes / no.

    The two shapes are redrawn until their boxes are apart along the relation's axis, so the
    answer is never borderline.
    """
    relation = rng.choice(tuple(RELATIONS))
    axis, coord, subject_smaller = RELATIONS[relation]
    pair = rng.sample([(c, s) for c in COLOURS for s in SHAPES], 2)
    while True:
        scene = shape_scene(rng, pair, image_size)
        first, second = sorted(scene, key=lambda o: o["box"][axis])
        if first["box"][axis + 2] <= second["box"][axis]:
            break
    yes = rng.random() < 0.5
    subject, other = (first, second) if yes == subject_smaller else (second, first)
    ca, cb = ((o["box"][axis] + o["box"][axis + 2]) // 2 for o in (subject, other))
    a, b = describe(subject), describe(other)
    steps = [
        f"The {a} is centred at {coord} = {ca} and the {b} at {coord} = {cb}.",
        f"{ca} {'<' if ca < cb else '>'} {cb}, so the {a} is {'' if yes else 'not '}{relation} the {b}.",
    ]
    return Item([scene], f"Is the {a} {relation} the {b}?", "yes" if yes else "no", steps)


def compare_two(rng: random.Random, image_size: int) -> Item:
    """Which of two images has more circles (or squares, triangles); counts never tie."""
    shape = rng.choice(SHAPES)
    while True:
        scenes = [shape_scene(rng, random_specs(rng, rng.randint(1, 6)), image_size) for _ in range(2)]
        found = [[o for o in s if o["shape"] == shape] for s in scenes]
        if len(found[0]) != len(found[1]):
            break
    n1, n2 = len(found[0]), len(found[1])
    winner = "1" if n1 > n2 else "2"
    steps = [
        *(_tally(f"{shape}s in image {i}", objs) for i, objs in enumerate(found, 1)),
        f"Image 1 has {count_phrase(n1, shape)} and image 2 has {count_phrase(n2, shape)}.",
        f"{max(n1, n2)} is more than {min(n1, n2)}, so image {winner} has more {shape}s.",
    ]
    question = f"Image 1: <image>\nImage 2: <image>\nWhich image has more {shape}s? Answer 1 or 2."
    return Item(scenes, question, winner, steps)


def grounding(rng: random.Random, image_size: int) -> Item:
    """Box of a named shape among 2-4 shapes with distinct colour+shape; ~20% absent (`[]`)."""
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    specs = rng.sample(kinds, rng.randint(2, 4))
    scene = shape_scene(rng, specs, image_size)
    absent = rng.random() < GROUNDING_NEGATIVE_RATE
    colour, shape = rng.choice([k for k in kinds if k not in specs]) if absent else rng.choice(specs)
    name = f"{colour} {shape}"
    hits = [o for o in scene if describe(o) == name]
    boxes = [o["box"] for o in hits]
    steps = [
        *(f"The {name} is at the {position(o['box'], image_size)}, with box {o['box']}." for o in hits),
        *([] if hits else [f"There is no {name} in the image, so there is no box."]),
    ]
    return Item([scene], f"Give the bounding box of the {name}.", boxes, steps, {"boxes": boxes})


# What a referring description names: the target's colour, shape and / or grid position. Position
# tells apart shapes that look alike ("the circle at the top left").
REFERRING_FORMS = (
    ("colour", "shape"),
    ("shape",),
    ("colour",),
    ("shape", "position"),
    ("colour", "shape", "position"),
)
_VOCABULARY = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS}


def _phrase(values: dict[str, str]) -> str:
    """A description without article: "red circle", "circle", "red shape", "circle at the top"."""
    noun = f"{values.get('colour', '')} {values.get('shape', 'shape')}".strip()
    return f"{noun} at the {values['position']}" if "position" in values else noun


def referring(rng: random.Random, image_size: int) -> Item:
    """Box of the shape a description picks out by colour, shape and / or position; ~20% absent.

    Among 2-4 shapes that may look alike. The scene is redrawn until the description fits exactly
    one shape, or, for a negative (answer `[]`), none.
    """
    absent = rng.random() < GROUNDING_NEGATIVE_RATE
    while True:
        scene = shape_scene(rng, random_specs(rng, rng.randint(2, 4)), image_size)
        form = rng.choice(REFERRING_FORMS)
        seen = [
            {"colour": o["colour"], "shape": o["shape"], "position": position(o["box"], image_size)}
            for o in scene
        ]
        described = [{a: attrs[a] for a in form} for attrs in seen]
        values = {a: rng.choice(_VOCABULARY[a]) for a in form} if absent else rng.choice(described)
        hits = [o for o, d in zip(scene, described, strict=True) if d == values]
        if len(hits) == (0 if absent else 1):
            break
    name = _phrase(values)
    boxes = [o["box"] for o in hits]
    checks = [
        f"the {describe(o)} at the {attrs['position']} {'matches' if o in hits else 'does not'}"
        for o, attrs in zip(scene, seen, strict=True)
    ]
    steps = [
        f"Looking for the {name}: {', '.join(checks)}.",
        *(f"So the {name} has box {o['box']}." for o in hits),
        *([] if hits else [f"There is no {name} in the image, so there is no box."]),
    ]
    return Item([scene], f"Give the bounding box of the {name}.", boxes, steps, {"boxes": boxes})


def detection(rng: random.Random, image_size: int) -> Item:
    """Every shape among 1-5, as JSON objects `{"bbox": [x1, y1, x2, y2], "label": "red circle"}`.

    Objects are listed in reading order; the reasoning names each one with its place and box.
    """
    scene = shape_scene(rng, random_specs(rng, rng.randint(1, 5)), image_size)
    objects = [{"bbox": o["box"], "label": describe(o)} for o in scene]
    steps = [
        *(f"The {describe(o)} at the {position(o['box'], image_size)} has box {o['box']}." for o in scene),
        f"That makes {count_phrase(len(scene), 'shape')} to report.",
    ]
    return Item([scene], "Detect all shapes and give their labels and boxes as JSON.", objects, steps)


TASKS: dict[str, Task] = {
    "counting": counting,
    "count_shapes": count_shapes,
    "colour_mcq": colour_mcq,
    "digit_sum": digit_sum,
    "spatial": spatial,
    "compare_two": compare_two,
    "grounding": grounding,
    "referring": referring,
    "detection": detection,
}


def get_task(name: str) -> Task:
    """The task registered as `name`; unknown names fail listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown synth task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
