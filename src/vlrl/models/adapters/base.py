"""The adapter interface: everything model-family-specific lives behind it.

The rest of vlrl never looks at a model's class: it asks the family's adapter how to turn a
sample into inputs, which modules form the vision tower / connector / language model, which
tokens are vision placeholders (never to be sampled), and how the family writes boxes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from PIL import Image
from torch import nn

from vlrl.data.images import DEFAULT_MAX_PIXELS, ImageError, image_size, load_image
from vlrl.data.prompts import Template, build_messages
from vlrl.data.sample import Sample
from vlrl.models.batching import TOKEN_KEYS, Encoded, PromptSource
from vlrl.models.boxes import BOX_CONVENTIONS, rewrite_boxes

MODULE_GROUPS = ("vision", "connector", "language")

# ImageError, image_size and load_image are re-exported: the adapters were their home before vlrl.data
__all__ = [
    "MODULE_GROUPS",
    "ImageError",
    "ModelAdapter",
    "image_size",
    "load_image",
    "plain_positions",
    "unwrap",
]


class ModelAdapter(ABC):
    """One per model family. Subclasses fill the class attributes and the abstract methods.

    `module_prefixes` maps each group in `MODULE_GROUPS` to module paths (as in
    `model.named_modules()`); a more specific prefix wins, so the connector can live inside the
    vision module (Qwen's `visual.merger`).
    """

    family: ClassVar[str]
    box_convention: ClassVar[str]
    module_prefixes: ClassVar[dict[str, tuple[str, ...]]]
    placeholder_tokens: ClassVar[tuple[str, ...]]
    lora_modules: ClassVar[dict[str, tuple[str, ...]]]
    vision_keys: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        processor,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_image_pixels = max_image_pixels  # decompression guard of the original files

    # ---- inputs -------------------------------------------------------------------------
    @abstractmethod
    def image_kwargs(self) -> dict:
        """Keyword arguments for the image processor (resolution bounds in the family's terms)."""

    @abstractmethod
    def model_image_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of an image of `size` as the model sees it after preprocessing."""

    def encode(self, sample: Sample, template: Template, response: str | None = None) -> Encoded:
        """Model inputs for `sample`'s prompt, followed by `response` and end-of-turn when given."""
        encoded = self.encode_messages(
            build_messages(sample, template), [load_image(p, self.max_image_pixels) for p in sample.images]
        )
        if response is None:
            return encoded
        return encoded.with_response(self.response_ids(response))

    def encode_messages(self, messages: list[dict], images: list[Image.Image]) -> Encoded:
        """Prompt inputs for chat `messages` whose `{"type": "image"}` parts are `images`, in order:
        the model's chat template, then its processor with the family's image arguments."""
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out = self.processor(text=[text], images=images or None, return_tensors="pt", **self.image_kwargs())
        tokens = {k: out[k][0] for k in TOKEN_KEYS if k in out}
        vision = {k: out[k] for k in self.vision_keys if k in out}
        return Encoded(
            tokens=tokens,
            vision=vision,
            prompt_length=int(tokens["input_ids"].shape[0]),
            source=PromptSource(messages, text, list(images)),
        )

    def response_ids(self, response: str) -> torch.Tensor:
        """Token ids of an assistant answer, closed by the end-of-turn token the model must learn.

        Special-token strings inside the text stay text: a target that literally contains
        `<|image_pad|>` must not smuggle a vision placeholder into the training sequence.
        """
        ids = self.tokenizer(response, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return torch.tensor([*ids, self.tokenizer.eos_token_id], dtype=torch.long)

    def prompt_length(self, sample: Sample, template: Template) -> int:
        """Prompt tokens including the image tokens the processor expands placeholders into."""
        return self.encode(sample, template).length

    def blocked_token_ids(self, vocab_size: int) -> list[int]:
        """Ids that must never be sampled or scored: vision placeholders, and the embedding rows
        beyond the tokenizer (`vocab_size` is the model's) that no token maps to."""
        return self.placeholder_token_ids() + list(range(len(self.tokenizer), vocab_size))

    def placeholder_token_ids(self) -> list[int]:
        """Vision placeholder tokens: never sampled, never allowed into training sequences."""
        ids = self.tokenizer.convert_tokens_to_ids(list(self.placeholder_tokens))
        return [i for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    @abstractmethod
    def position_ids(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Position ids the language model uses for `batch` (1-D per row, or M-RoPE's 3-D)."""

    def image_features(self, model: nn.Module, vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, hidden] language-space features of every image token in `vision`'s images, in order.

        Computed once, they replace the vision tower in later passes over the same images
        (`embed`), which is exact when the vision tower and connector are frozen.
        """
        out = unwrap(model).model.get_image_features(**vision).pooler_output
        parts = out if isinstance(out, (tuple, list)) else [out]
        return torch.cat([p.reshape(-1, p.shape[-1]) for p in parts])

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor], features: torch.Tensor) -> dict:
        """Model inputs with precomputed image `features` placed at the image tokens.

        Positions are passed explicitly: without pixel inputs the model could not rebuild M-RoPE.
        """
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        image_mask = (ids == unwrap(model).config.image_token_id)[..., None]
        embeds = embeds.masked_scatter(image_mask, features.to(embeds.dtype))
        return {
            "inputs_embeds": embeds,
            "attention_mask": batch["attention_mask"],
            "position_ids": self.position_ids(model, batch),
        }

    # ---- modules ------------------------------------------------------------------------
    def module_group(self, name: str) -> str:
        """The group of the parameter or module `name` (longest matching prefix)."""
        best, best_len = None, -1
        for group, prefixes in self.module_prefixes.items():
            for prefix in prefixes:
                if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                    best, best_len = group, len(prefix)
        if best is None:
            raise KeyError(f"{self.family} adapter: parameter '{name}' belongs to no module group")
        return best

    def parameter_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Every parameter of `model` in exactly one of `MODULE_GROUPS` (an unknown one raises)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in MODULE_GROUPS}
        for name, param in model.named_parameters():
            groups[self.module_group(_strip_peft(name))].append((name, param))
        return groups

    def lora_target_modules(self, parts: tuple[str, ...]) -> str:
        """A peft `target_modules` regex selecting the linear layers of the given groups."""
        alternatives = []
        for group in parts:
            for prefix in self.module_prefixes[group]:
                leaves = "|".join(self.lora_modules[group])
                alternatives.append(re.escape(prefix) + rf"\..*\.({leaves})")
        return "|".join(f"(?:{a})" for a in alternatives)

    # ---- boxes --------------------------------------------------------------------------
    def box_fields(self, sample: Sample) -> dict:
        """Reward fields that let box rewards read this family's boxes (see rewards.perception)."""
        if not sample.images:
            return {"box_convention": "pixels", "image_size": None, "model_image_size": None}
        size = image_size(sample.images[0])
        return {
            "box_convention": self.box_convention,
            "image_size": list(size),
            "model_image_size": list(self.model_image_size(size)),
        }

    def render_target(self, sample: Sample, text: str) -> str:
        """An SFT target with its pixel boxes written in this family's convention.

        Only samples whose ground truth is boxes are touched (their targets hold boxes in the
        original image's pixels, as data files do); other text is returned unchanged.
        """
        truth = sample.extra.get("boxes", sample.answer)
        if not (sample.images and isinstance(truth, list)):
            return text
        size = image_size(sample.images[0])
        return rewrite_boxes(text, lambda box: self.box_from_pixels(box, size))

    def box_from_pixels(self, box, original_size: tuple[int, int]) -> list[float]:
        """A box in original-image pixels -> as the model should write it."""
        _, from_px = BOX_CONVENTIONS[self.box_convention]
        return from_px(box, original_size, self.model_image_size(original_size))


def plain_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, L] 1-D positions counting only real tokens, so left padding does not shift them."""
    mask = batch["attention_mask"].long()
    return (mask.cumsum(-1) - 1).clamp(min=0)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _strip_peft(name: str) -> str:
    """Parameter names inside a peft model gain wrappers; group them by the original path."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")
