"""What the rollout backends share: stop tokens, the token mask and the prompt check.

Kept apart from the backends so that none imports another: the `server` backend needs the same
token mask and prompt check as the colocated vLLM engine, and every backend the same default
stop tokens. (The weights both send are `vlrl.models.export.export_weights`.)
"""

from __future__ import annotations

from torch import nn

from vlrl.models.adapters import ModelAdapter
from vlrl.models.batching import Encoded


def default_stop_ids(model: nn.Module, tokenizer) -> list[int]:
    """The generation config's EOS id(s) and the tokenizer's, without repeats."""
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model declares no EOS token: give stop_token_ids")
    return list(dict.fromkeys(ids))


def token_mask(model: nn.Module, adapter: ModelAdapter) -> tuple[list[int], list[int]]:
    """(blocked, allowed) token ids of `model`'s vocabulary, each sorted: an engine is told one of them."""
    vocab = model.get_output_embeddings().weight.shape[0]
    blocked = set(adapter.blocked_token_ids(vocab))
    return sorted(blocked), [i for i in range(vocab) if i not in blocked]


def check_prompt_ids(prompt: Encoded, engine_ids: list[int], index: int) -> None:
    """Fail when the engine's prompt tokens differ from the trainer's for prompt `index`.

    The completions would then be scored and trained after a different prompt than the one they
    were sampled from (typically a different number of image tokens)."""
    ours = prompt.tokens["input_ids"].tolist()
    if engine_ids == ours:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(engine_ids, ours, strict=False)) if a != b),
        min(len(ours), len(engine_ids)),
    )
    where = (
        f"; first difference at position {at} (engine {engine_ids[at : at + 3]}, trainer {ours[at : at + 3]})"
    )
    raise _disagreement(index, len(engine_ids), len(ours), where)


def check_prompt_length(prompt: Encoded, engine_length: int, index: int) -> None:
    """Fail when an engine that reports only how many tokens it made of prompt `index` (SGLang's
    `meta_info.prompt_tokens`) made another number than the trainer did (see `check_prompt_ids`)."""
    if engine_length != prompt.length:
        raise _disagreement(index, engine_length, prompt.length, "")


def _disagreement(index: int, engine_length: int, trainer_length: int, where: str) -> RuntimeError:
    return RuntimeError(
        f"rollout prompt {index}: the engine tokenised it into {engine_length} tokens, the trainer into "
        f"{trainer_length}{where}. The two processors disagree (image size bounds, chat template or a BOS "
        "token): align them before training, or use rollout.backend=hf"
    )
