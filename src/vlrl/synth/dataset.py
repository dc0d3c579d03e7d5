"""Writing a synthetic task out as a vlrl data folder.

Layout: `train.jsonl`, `heldout.jsonl` and `images/<id>_<k>.png`, image paths in rows relative to
the folder. The output is a pure function of the arguments: one `random.Random(seed)` drives all
sampling, PNGs are written with fixed options and no metadata, and JSON keys come in a fixed order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from vlrl.io import ProgressBar, write_jsonl
from vlrl.synth.render import render
from vlrl.synth.scene import captions
from vlrl.synth.tasks import TASKS, Item, Task, answer_text, get_task


def generate_dataset(
    task: str,
    n: int,
    out_dir: Path,
    seed: int,
    heldout: int | float = 0.1,
    image_size: int = 112,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate `n` examples of `task` and split off the last `heldout` of them.

    `heldout` is a count (int) or a fraction of `n` (float). Returns the paths of the two files as
    {"train": ..., "heldout": ...}. The same arguments give byte-identical files. `progress`
    shows a bar with ETA on stderr while the images are written.
    """
    make = get_task(task)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    n_heldout = heldout_count(heldout, n)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    items = distinct_items(make, random.Random(seed), n, image_size)
    rows = []
    with ProgressBar(n, f"synth {task}", unit="sample", enabled=progress) as bar:
        for i, item in enumerate(items):
            rows.append(write_example(task, f"{task}-{i:06d}", item, out_dir, image_size))
            bar.update()
    paths = {"train": out_dir / "train.jsonl", "heldout": out_dir / "heldout.jsonl"}
    write_jsonl(paths["train"], rows[: n - n_heldout])
    write_jsonl(paths["heldout"], rows[n - n_heldout :])
    return paths


def heldout_count(heldout: int | float, n: int) -> int:
    """Number of held-out examples: an int is a count, a float a fraction of `n` (rounded)."""
    count = round(heldout * n) if isinstance(heldout, float) else heldout
    if not 0 <= count <= n:
        raise ValueError(f"heldout={heldout!r} must be a count in [0, {n}] or a fraction in [0, 1]")
    return count


def distinct_items(make: Task, rng: random.Random, n: int, image_size: int) -> list[Item]:
    """`n` items with pairwise different scenes, so train and held-out never share an image."""
    seen: set[str] = set()
    items: list[Item] = []
    while len(items) < n:
        item = make(rng, image_size)
        key = json.dumps(item.scenes)
        if key not in seen:
            seen.add(key)
            items.append(item)
    return items


def write_example(task: str, sample_id: str, item: Item, out_dir: Path, image_size: int) -> dict[str, Any]:
    """Save the item's images and return its data row."""
    images = [f"images/{sample_id}_{k}.png" for k in range(len(item.scenes))]
    for scene, rel in zip(item.scenes, images, strict=True):
        render(scene, image_size).save(out_dir / rel, format="PNG", optimize=False, compress_level=6)
    caption = captions(item.scenes, image_size, item.positions)
    solution = solution_text(item, caption)
    return {
        "id": sample_id,
        "task": task,
        "images": images,
        "question": item.question,
        "answer": item.answer,
        **item.extra,
        "solution": solution,
        "caption": caption,
        # One scene per image; single-image tasks store the scene itself.
        "scene": item.scenes[0] if len(item.scenes) == 1 else item.scenes,
    }


def solution_text(item: Item, caption: str) -> str:
    """The cold-start SFT target: caption and reasoning steps in <think>, then the answer."""
    return f"<think>{' '.join([caption, *item.steps])}</think><answer>{answer_text(item.answer)}</answer>"


def task_texts(n_per_task: int, seed: int, image_size: int = 112) -> list[str]:
    """Questions, options and solutions of every task, without rendering: a tokenizer corpus."""
    rng = random.Random(seed)
    texts = []
    for name in sorted(TASKS):
        for _ in range(n_per_task):
            item = TASKS[name](rng, image_size)
            texts.append(item.question)
            texts.extend(f"{chr(65 + i)}. {c}" for i, c in enumerate(item.extra.get("choices", [])))
            texts.append(solution_text(item, captions(item.scenes, image_size, item.positions)))
    return texts
