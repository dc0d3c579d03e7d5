"""What runs write and read: JSONL files (one writer and one reader for all of vlrl) and progress displays.

Low in the house (it imports nothing of vlrl), so that the trainers that write run files, the
monitors and the report that read them, the evaluator, the synthetic-data generator and the
cold-start pipeline share one implementation without importing one another.
"""

from vlrl.io import jsonl, progress
from vlrl.io.jsonl import JsonlAppender, append_jsonl, jsonl_line, read_jsonl, truncate_jsonl, write_jsonl
from vlrl.io.progress import ProgressBar, progress_text, step_progress
from vlrl.io.runfiles import ALARMS_FILE, CONFIG_FILE, METRICS_FILE, ROLLOUTS_FILE, read_metrics

__all__ = [
    "ALARMS_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "ROLLOUTS_FILE",
    "JsonlAppender",
    "ProgressBar",
    "append_jsonl",
    "jsonl",
    "jsonl_line",
    "progress",
    "progress_text",
    "read_jsonl",
    "read_metrics",
    "step_progress",
    "truncate_jsonl",
    "write_jsonl",
]
