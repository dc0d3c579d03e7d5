"""Cold-start SFT data by Vision-R1's modality bridging (`vlrl coldstart`).

    report = run_coldstart("train.jsonl", "cold.jsonl", ColdStartConfig(vlm_url=..., reasoner_url=...))

Both models are reached over the OpenAI chat API (`vlrl serve`, vLLM, or a hosted API), with the
small standard-library client in `client`.
"""

from vlrl.coldstart.client import RequestFailed, chat, list_models
from vlrl.coldstart.output import REASONS
from vlrl.coldstart.pipeline import SOLUTION_LAYOUTS, ColdStartConfig, judge, run_coldstart

__all__ = [
    "REASONS",
    "SOLUTION_LAYOUTS",
    "ColdStartConfig",
    "RequestFailed",
    "chat",
    "judge",
    "list_models",
    "run_coldstart",
]
