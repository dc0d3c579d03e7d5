"""Deterministic PIL-rendered visual tasks for training and testing tiny VLMs.

>>> from vlrl.synth import TASKS, generate_dataset
>>> sorted(TASKS)
['colour_mcq', 'compare_two', 'counting', 'detection', 'digit_sum', 'grounding', 'referring', 'spatial']

`generate_dataset(task, n, out_dir, seed)` writes `train.jsonl`, `heldout.jsonl` and `images/`.
Each row keeps its structured `scene` (shapes, colours, exact pixel boxes), a plain-English
`caption`, and a `<think>...</think><answer>...</answer>` `solution` reasoned from the caption.
"""

from vlrl.synth.dataset import generate_dataset, task_texts
from vlrl.synth.tasks import TASKS, Item, Task

__all__ = ["TASKS", "Item", "Task", "generate_dataset", "task_texts"]
