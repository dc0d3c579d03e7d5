"""Checkpoints: save, find, resume, prune, and merge LoRA adapters into a plain model.

Layout: `<output_dir>/checkpoints/step_000010/` holds the model in Hugging Face format (full
weights, or for a peft model only the adapter), the processor, a README.md model card saying how
to load it with transformers alone (`model_card`), and `trainer_state.pt` with the
optimizer, scheduler and RNG states and the trainer's own state (step, sampler position, ...).
A checkpoint is written into `step_000010.tmp/` and renamed when complete, so a run killed while
saving leaves a `.tmp` folder that `latest_checkpoint` never picks.

A torchrun job (FSDP2) writes the same folder: the Hugging Face files hold the consolidated
weights (gathered to rank 0, so transformers and vLLM load them as they are), `sharded/` holds
every rank's model and optimizer shards (torch.distributed.checkpoint) for a fast resume at the
same world size, and `rng_rank<r>.pt` each rank's generator states; `trainer_state.pt` then has
no optimizer entry.

`trainer_state` also holds the run's config (YAML). Resuming compares it with the config of the
resuming run and refuses any difference outside `MAY_CHANGE_ON_RESUME`, so `train.resume=auto`
cannot continue a different, earlier run that used the same output_dir; and a new run
(`train.resume` unset) refuses a folder that already holds checkpoints.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from vlrl.models.loading import DTYPES, load_processor

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_CARD = "README.md"  # what the folder holds and how to load it outside vlrl
STEP_DIR = re.compile(r"step_(\d+)")
# Exact types: numpy scalars subclass float but `torch.load(weights_only=True)` refuses them.
PLAIN_SCALARS = (str, int, float, bool, type(None))
# Config keys a resumed run may set differently from the run it continues: where it writes and
# logs, how often it evaluates and saves, alarms, timeouts, and how far it goes (train.steps).
# None of them changes what the steps already taken would have computed. A key ending in "." or
# "_" covers every key it starts; another covers itself and the keys under it.
MAY_CHANGE_ON_RESUME = (
    "train.steps",
    "train.resume",
    "train.output_dir",
    "train.device",
    "train.save_every",
    "train.keep_last_checkpoints",
    "train.log_every",
    "train.eval_",
    "train.max_nonfinite_skips",
    "data.eval",
    "logging.",
    "monitor.",
    "distributed.timeout_s",
    "rollout.server.url",
    "rollout.server.timeout_s",
    "rollout.server.retries",
    "sft.eval_max_new_tokens",
    "sft.stop_at_acc",
    "sft.stop_from_step",
)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives: `<output_dir>/checkpoints/step_000010`."""
    return Path(output_dir) / CHECKPOINTS / f"step_{step:06d}"


def rng_states() -> dict:
    """Python, numpy, torch CPU and (when present) CUDA generator states, as plain data.

    numpy's key array becomes a list because `torch.load(weights_only=True)` refuses numpy arrays.
    """
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Inverse of `rng_states`. CUDA states are restored only when the device count is the saved one."""
    random.setstate(states["python"])
    np_state = dict(states["numpy"], state=dict(states["numpy"]["state"]))
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(states["cuda"]):
        torch.cuda.set_rng_state_all(states["cuda"])


def check_plain(value, where: str = "trainer_state") -> None:
    """Raise TypeError naming the entry if `value` is not plain data that `weights_only` loading accepts.

    Checked when saving so that a bad entry fails at the first checkpoint, not at resume time.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not (isinstance(value, torch.Tensor) or type(value) in PLAIN_SCALARS):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoints hold only dicts, lists, str, int,"
            " float, bool, None and tensors"
        )


def model_card(
    folder: Path, model, trainer_state: dict | None = None, merged_from: Path | None = None
) -> str:
    """The README.md of a checkpoint `folder`: what it holds and the lines that load it outside vlrl.

    Those lines must import vlrl: the folder's processor is vlrl's image-only class, which
    `AutoProcessor` knows only once vlrl registered it, and without it (and without torchvision)
    transformers silently returns a bare tokenizer.
    """
    trainer_state = trainer_state or {}
    config = yaml.safe_load(trainer_state["config"]) if trainer_state.get("config") else {}
    base = config.get("model", {}).get("path") or model.config._name_or_path
    lora = isinstance(model, PeftModel)
    what = "LoRA adapters" if lora else "full weights"
    if "step" in trainer_state:
        what += f" after step {trainer_state['step']} of a vlrl run from `{base}`"
    if merged_from is not None:
        what += f": the LoRA adapters of `{merged_from}` merged into `{base}`"
    lines = [
        f"# {folder.name}",
        "",
        f"A `{model.config.model_type}` vision-language model: {what}.",
        "",
        "## Load it with transformers",
        "",
        "vlrl saves an image-only processor (no video processor, so the model runs without torchvision).",
        "transformers knows its class once `import vlrl` has run; without that import and without",
        "torchvision, `AutoProcessor.from_pretrained` silently returns a bare tokenizer. So import vlrl",
        "first, or install torchvision (then transformers' own processor class loads the folder):",
        "",
        "```python",
        "import vlrl  # registers vlrl's image-only processors with AutoProcessor",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        f'model, processor = AutoModelForImageTextToText.from_pretrained("{folder}"), '
        f'AutoProcessor.from_pretrained("{folder}")',
        "```",
    ]
    if lora:
        lines += [
            "",
            f"The folder holds LoRA adapters only: with peft installed these lines load `{base}` with the",
            f"adapters attached; `vlrl merge {folder} --out DIR` writes a plain checkpoint.",
        ]
    return "\n".join(lines) + "\n"


def save_checkpoint(step_dir: Path, model, processor, optimizer, scheduler, trainer_state: dict) -> None:
    """Write a complete checkpoint to `step_dir` atomically (see module docstring).

    `model.save_pretrained` writes safetensors; for a peft model that is the adapter only, with
    `adapter_config.json` recording the base model's path. `trainer_state` must be plain data
    (see `check_plain`).
    """
    step_dir = Path(step_dir)
    check_plain(trainer_state)
    # States first, so that the RNG states are those of the training loop, whatever saving draws.
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(),
        "trainer": trainer_state,
    }
    tmp = _fresh_tmp(step_dir)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / MODEL_CARD).write_text(model_card(step_dir, model, trainer_state))
        torch.save(state, tmp / STATE_FILE)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk needs the space back
        raise
    _publish(tmp, step_dir)


def _tmp_dir(step_dir: Path) -> Path:
    """Where `step_dir` is written before `_publish` renames it."""
    return step_dir.with_name(step_dir.name + ".tmp")


def _fresh_tmp(step_dir: Path) -> Path:
    """An empty `_tmp_dir(step_dir)` to write the checkpoint into."""
    tmp = _tmp_dir(step_dir)
    if tmp.exists():  # left by a run killed while saving this step
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, step_dir: Path) -> None:
    """Rename the finished `tmp` folder to `step_dir`, the step that makes the checkpoint visible."""
    if step_dir.exists():  # the same step saved again, e.g. the final save of a resumed run
        shutil.rmtree(step_dir)
    tmp.rename(step_dir)


def save_sharded_checkpoint(
    step_dir: Path, model, processor, optimizer, scheduler, trainer_state: dict, rank: int, world_size: int
) -> None:
    """`save_checkpoint` for a torchrun job; every rank calls it (see the module docstring)."""
    from vlrl.distributed import barrier
    from vlrl.distributed.fsdp import full_state_dict, save_sharded

    step_dir = Path(step_dir)
    check_plain(trainer_state)
    rng = rng_states()
    full = full_state_dict(model, rank0_only=True)
    tmp = _tmp_dir(step_dir)
    if rank == 0:
        _fresh_tmp(step_dir)
    barrier("checkpoint folder")
    save_sharded(tmp, model, optimizer)
    torch.save(rng, tmp / f"rng_rank{rank}.pt")  # each rank's generators, read back on resume
    if rank == 0:
        model.save_pretrained(tmp, state_dict=full)
        processor.save_pretrained(tmp)
        (tmp / MODEL_CARD).write_text(model_card(step_dir, model, trainer_state))
        state = {
            "optimizer": None,
            "scheduler": scheduler.state_dict(),
            "trainer": trainer_state,
            "world_size": world_size,
        }
        torch.save(state, tmp / STATE_FILE)
    barrier("checkpoint written")
    if rank == 0:
        _publish(tmp, step_dir)
    barrier("checkpoint renamed")


def load_trainer_state(
    step_dir: Path, optimizer, scheduler, model=None, rank: int = 0, world_size: int | None = None
) -> dict:
    """Restore optimizer, scheduler and RNG states from `step_dir`; return the saved trainer_state.

    Model weights are not touched here: the trainer loads them from `step_dir` itself, with
    `vlrl.models.loading.load_model(step_dir)` after full fine-tuning, or for LoRA by loading the
    base model and `peft.PeftModel.from_pretrained(base, step_dir, is_trainable=True)`. Build the
    optimizer over those parameters before calling this.

    `world_size` is None in a single process; a torchrun job passes its (sharded) `model`, rank
    and size, and restores the model and optimizer shards from the folder (same world size only).
    """
    step_dir = Path(step_dir)
    path = step_dir / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' not found: '{step_dir}' is not a complete vlrl checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_world = state.get("world_size")
    if world_size is None:
        if state["optimizer"] is None:
            raise ValueError(
                f"'{step_dir}' was saved by a {saved_world}-process torchrun job and its optimizer state is "
                f"sharded: resume it with torchrun --nproc_per_node {saved_world} (its weights alone load "
                "with model.path)"
            )
        optimizer.load_state_dict(state["optimizer"])  # moves state tensors to the parameters' device
        rng = state["rng"]
    else:
        if saved_world != world_size:
            saved = "a single process" if saved_world is None else f"{saved_world} processes"
            raise ValueError(
                f"'{step_dir}' was saved by {saved} and this job has {world_size}: resume at the same "
                "world size (or start a new run from its weights with model.path)"
            )
        from vlrl.distributed.fsdp import load_sharded

        load_sharded(step_dir, model, optimizer)
        rng = torch.load(step_dir / f"rng_rank{rank}.pt", map_location="cpu", weights_only=True)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_states(rng)
    return state["trainer"]


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint under `output_dir`, by increasing step."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.fullmatch(path.name)  # `.tmp` folders do not match
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The finished checkpoint with the highest step, or None when there is none."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint `train.resume` asks for: None, 'auto' (latest, or None for a fresh run), or a folder."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"train.resume '{resume}' is not a checkpoint folder (no {STATE_FILE} in it);"
            f" use 'auto' for the latest one in {Path(output_dir) / CHECKPOINTS}"
        )
    return path


def saved_config(step_dir: Path) -> dict | None:
    """The config a checkpoint's run saved in its trainer_state, or None when it has none.

    Memory-mapped: only the config is read, not the optimizer state beside it.
    """
    state = torch.load(Path(step_dir) / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    text = state["trainer"].get("config")
    return yaml.safe_load(text) if text else None


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config sections as dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        flat |= flatten(value, name + ".") if isinstance(value, dict) else {name: value}
    return flat


def _may_change(key: str) -> bool:
    return any(
        key.startswith(k) if k.endswith((".", "_")) else key == k or key.startswith(k + ".")
        for k in MAY_CHANGE_ON_RESUME
    )


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for each key whose value differs and may not change on resume.

    Keys only one side has are skipped: a key added to vlrl after the checkpoint was saved
    defaults to the behaviour the checkpoint's run had.
    """
    old, new = flatten(saved), flatten(current)
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in old.keys() & new.keys()
        if old[k] != new[k] and not _may_change(k)
    ]


def check_resume_config(step_dir: Path, current: dict) -> None:
    """Refuse (ValueError) to resume `step_dir` with a config that differs from its run's."""
    saved = saved_config(step_dir)
    diffs = sorted(config_differences(saved, current)) if saved is not None else []
    if diffs:
        raise ValueError(
            f"train.resume: checkpoint '{step_dir}' was saved by a run with other settings ("
            + "; ".join(diffs)
            + "): resume with that run's settings, or start a new run in another train.output_dir"
        )


def check_fresh_folder(output_dir: str | Path) -> None:
    """Refuse (ValueError) to start a new run in a folder that holds an earlier run's checkpoints:
    its metrics and checkpoints would mix with the new run's, and `resume=auto` would later pick
    whichever step is highest."""
    latest = latest_checkpoint(output_dir)
    if latest is not None:
        raise ValueError(
            f"train.output_dir '{output_dir}' already holds checkpoints of a run (latest: {latest.name}): "
            "continue it with train.resume=auto, or start a new run in another train.output_dir"
        )


def prune_checkpoints(output_dir: str | Path, keep_last: int | None, keep: Path | None = None) -> None:
    """Delete all but the `keep_last` most recent finished checkpoints (`train.keep_last_checkpoints`;
    None keeps all), and never `keep`: the checkpoint a resumed run started from stays until a
    later run resumes from a newer one."""
    if keep_last is None:
        return
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (or None to keep all), got {keep_last}")
    kept = Path(keep).resolve() if keep is not None else None
    for _, path in complete_checkpoints(output_dir)[:-keep_last]:
        if path.resolve() != kept:
            shutil.rmtree(path)


def merge_lora(adapter_dir: Path, out_dir: Path, dtype: str = "auto") -> Path:
    """Fold a saved LoRA adapter into its base model; `out_dir` then loads with plain transformers.

    The base model is read from the path peft recorded in `adapter_config.json`
    (`base_model_name_or_path`; a relative path is taken from the current directory). The
    processor comes from `adapter_dir`, where `save_checkpoint` put it. `dtype` is 'auto' (the
    base checkpoint's) or one of `vlrl.models.loading.DTYPES`.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"'{config_file}' not found: '{adapter_dir}' is not a LoRA adapter checkpoint"
        )
    base_path = json.loads(config_file.read_text())["base_model_name_or_path"]
    if not base_path:
        raise ValueError(f"'{config_file}' records no base_model_name_or_path to merge into")
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not 'auto' or one of {', '.join(DTYPES)}")
    base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=DTYPES.get(dtype, "auto"))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_processor(adapter_dir, merged.config).save_pretrained(out_dir)
    (out_dir / MODEL_CARD).write_text(model_card(out_dir, merged, merged_from=adapter_dir))
    return out_dir
