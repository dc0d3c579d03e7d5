"""Load a checkpoint folder (a downloaded Qwen2.5-VL-7B-Instruct or a vlrl tiny model).

Only transformers' own classes are used: `AutoConfig`, `AutoModelForImageTextToText`, and
`AutoProcessor` where torchvision works. Without torchvision, the family's image-only processor
is built from the same files (see `vlrl.models.processors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from vlrl.data.images import DEFAULT_MAX_PIXELS
from vlrl.models.adapters import ModelAdapter, adapter_for
from vlrl.models.processors import IMAGE_ONLY_PROCESSORS, torchvision_usable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, setting: str = "train.device") -> torch.device:
    """The torch device `name` (auto, cpu, cuda, cuda:N); `setting` is where the user chose it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        # Otherwise the first tensor moved there fails deep inside torch with no hint of the setting.
        raise ValueError(f"{setting}={name}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(name)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: object
    adapter: ModelAdapter


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"model folder '{path}' does not exist (model.path)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"'{path}' has no config.json: not a Hugging Face checkpoint folder (model.path). "
            "Build a tiny one with `vlrl tiny-model --family qwen2_vl --out DIR`."
        )


def load_processor(path: str | Path, config=None):
    """The checkpoint's processor; the image-only variant when torchvision is unusable.

    Refuses (ValueError) anything without an image processor: `AutoProcessor` silently returns a
    bare tokenizer when it does not know the saved processor class, and a tokenizer would fail
    only later, at the first image, far from the cause.
    """
    path = Path(path)
    config = config or AutoConfig.from_pretrained(path)
    if torchvision_usable():
        processor = AutoProcessor.from_pretrained(path)
    else:
        processor_class = IMAGE_ONLY_PROCESSORS.get(type(config))
        if processor_class is None:
            raise RuntimeError(
                f"'{path}' ({config.model_type}) needs torchvision for its processor, which is not usable here"
            )
        processor = processor_class.from_pretrained(path)
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"'{path}' has no usable image processor: AutoProcessor returned a bare "
            f"{type(processor).__name__} ({_saved_processor_class(path)}); copy the processor files of "
            "the model it was trained from into the folder, or install torchvision"
        )
    return processor


def _saved_processor_class(path: Path) -> str:
    """What the folder's processor_config.json asks for, in words, for error messages."""
    file = path / "processor_config.json"
    if not file.is_file():
        return "the folder has no processor_config.json"
    name = json.loads(file.read_text()).get("processor_class")
    return (
        f"processor_config.json names {name}, which transformers does not know"
        if name
        else ("processor_config.json names no processor_class")
    )


def load_model(
    path: str | Path,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> LoadedModel:
    """Model, processor and adapter for a checkpoint folder."""
    path = Path(path)
    _check_folder(path)
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    config = AutoConfig.from_pretrained(path)
    adapter_cls = adapter_for(config)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=DTYPES[dtype], attn_implementation=attn_implementation
    ).to(device)
    processor = load_processor(path, config)
    adapter = adapter_cls(
        processor, min_pixels=min_pixels, max_pixels=max_pixels, max_image_pixels=max_image_pixels
    )
    return LoadedModel(model, processor, adapter)
