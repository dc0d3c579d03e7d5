"""The adapter interface: everything model-family-specific lives behind it.

The rest of vlrl never looks at a model's class: it asks the family's adapter what the family
can do and how, as declared capabilities:
- inputs: how a sample becomes tokens and pixels, which token keys its forward needs
  (`token_keys`: Qwen3-VL and GLM-4.xV need `mm_token_type_ids`), which tokens are vision
  placeholders (never to be sampled);
- module groups (`module_patterns`): open-ended (vision, connector, language, and for MoE
  families router and experts), each freezable, trainable at its own learning rate and a LoRA
  target; fused 3-D expert weights are LoRA targets through peft's `target_parameters`;
- the vision cache (`vision_cache` / `cached_inputs`): everything the language model consumes from
  the vision tower (Qwen3-VL's deepstack features included), computed once and reused while
  the vision groups are frozen;
- whether its cache can be shared by a prompt's rows (`shared_prefix`);
- how the family writes boxes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from vlrl.data.images import DEFAULT_MAX_PIXELS, ImageError, image_size, load_image
from vlrl.data.prompts import Template, build_messages
from vlrl.data.sample import Sample
from vlrl.models.batching import Encoded, PromptSource
from vlrl.models.boxes import BOX_CONVENTIONS, rewrite_boxes

# ImageError, image_size and load_image are re-exported: the adapters were their home before vlrl.data
__all__ = [
    "ImageError",
    "ModelAdapter",
    "VisionCache",
    "image_size",
    "load_image",
    "plain_positions",
    "unwrap",
]


@dataclass
class VisionCache:
    """What the language model consumes from the vision tower for some images, kept for reuse.

    `output` is transformers' own encoder output (`get_image_features(..., return_dict=True)`),
    cut down to the fields the family's forward reads (`ModelAdapter.vision_output_fields`:
    the merged image features, and Qwen3-VL's per-layer deepstack features); the model takes
    it back as `mm_encoder_outputs={"image": output}` in place of pixels, so a cached pass
    computes exactly what a pass with pixels computes.
    """

    output: Any

    @classmethod
    def concat(cls, caches: Sequence[VisionCache | None]) -> VisionCache | None:
        """The caches of several prompts' images, in order, as one (None when none has images)."""
        present = [c.output for c in caches if c is not None]
        if not present:
            return None
        first = present[0]
        return cls(type(first)(**{k: _join([o[k] for o in present]) for k in first}))


def _join(parts: list) -> Any:
    """Concatenate per-image values of several encoder outputs: tensors along dim 0, per-image
    sequences end to end, per-layer sequences (deepstack) layer by layer."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if all(isinstance(x, torch.Tensor) for p in parts for x in p):
        return type(first)(x for p in parts for x in p)
    return type(first)(_join(list(layer)) for layer in zip(*parts, strict=True))


class ModelAdapter(ABC):
    """One per model family. Subclasses fill the class attributes and the abstract methods.

    `module_patterns` maps each module group to module paths (as in `model.named_modules()`),
    where `*` stands for one path component (a layer index); the most specific pattern wins (more
    components, then fewer `*`), so the connector can live inside the vision module (Qwen's
    `visual.merger`) and an MoE layer's router and experts inside the language model. The
    groups are the keys, in order; every parameter must belong to one.
    """

    family: ClassVar[str]
    box_convention: ClassVar[str]
    module_patterns: ClassVar[dict[str, tuple[str, ...]]]
    placeholder_tokens: ClassVar[tuple[str, ...]]
    # group -> leaf names of its Linear layers that LoRA adapts
    lora_modules: ClassVar[dict[str, tuple[str, ...]]]
    # group -> leaf names of fused parameters (MoE experts' [E, 2I, H] `gate_up_proj`) that LoRA
    # adapts through peft's `target_parameters`
    lora_parameters: ClassVar[dict[str, tuple[str, ...]]] = {}
    vision_keys: ClassVar[tuple[str, ...]]
    # token-aligned keys of the processor's output that the forward needs
    token_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    # the groups whose output the vision cache holds: it is reused only while all are frozen
    vision_groups: ClassVar[tuple[str, ...]] = ("vision", "connector")
    # fields of `get_image_features`'s output the language model reads (see `VisionCache`)
    vision_output_fields: ClassVar[tuple[str, ...]] = ("pooler_output",)
    # whether a prompt's cache can be continued by many rows (`vlrl.models.prefix`); a family
    # whose cache cannot be re-indexed per row says False and is scored by padded full passes
    shared_prefix: ClassVar[bool] = True
    # for a family that resizes every image to one size of its own: how, in words; the pixel
    # budget settings are then refused rather than silently ignored
    fixed_resolution: ClassVar[str | None] = None
    # whether transformers' forward returns the routers' load-balancing loss (`aux_loss`) when asked
    # for `output_router_logits`: what `model.router_aux_loss_coef` needs
    router_loss: ClassVar[bool] = False
    # how the routers turn logits into expert scores: "softmax" (Qwen3-MoE, Aria) or "sigmoid"
    # (GLM-4.5V); the router entropy of the expert-load metrics (`vlrl.monitoring.experts`) needs it
    router_scores: ClassVar[str] = "softmax"

    def __init__(
        self,
        processor,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if self.fixed_resolution and (min_pixels is not None or max_pixels is not None):
            raise ValueError(
                f"data.image_min_pixels / data.image_max_pixels do not apply to {self.family}: "
                f"{self.fixed_resolution}"
            )
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
        missing = [k for k in self.token_keys if k not in out]
        if missing:
            raise ValueError(f"{self.family}: the processor returned no {', '.join(missing)}")
        tokens = {k: out[k][0] for k in self.token_keys}
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

    def vision_cache(self, model: nn.Module, vision: dict[str, torch.Tensor]) -> VisionCache:
        """The vision tower's output for `vision`'s images, to stand in for them in later passes
        (`cached_inputs`); exact while the `vision_groups` are frozen."""
        # the outer class's method: transformers' delegate to `.model`, DeepSeek-VL2 has no `.model`
        out = unwrap(model).get_image_features(**vision, return_dict=True)
        kept = {k: out[k] for k in self.vision_output_fields}
        return VisionCache(type(out)(**kept))

    def cached_inputs(self, model: nn.Module, batch: dict[str, torch.Tensor], cache: VisionCache) -> dict:
        """Model inputs for `batch` with `cache` (its images, in order) in place of its pixels.

        Positions are passed explicitly: without pixel inputs the model could not rebuild M-RoPE.
        """
        tokens = {k: v for k, v in batch.items() if k in self.token_keys}
        return {
            **tokens,
            "position_ids": self.position_ids(model, batch),
            "mm_encoder_outputs": {"image": cache.output},
        }

    # ---- modules ------------------------------------------------------------------------
    @classmethod
    def groups(cls) -> tuple[str, ...]:
        """The family's module groups, in order."""
        return tuple(cls.module_patterns)

    def check_groups(self, names, setting: str) -> None:
        """Fail, naming `setting`, when `names` holds a group this family does not have."""
        unknown = [n for n in names if n not in self.module_patterns]
        if unknown:
            raise ValueError(
                f"{setting}: {self.family} has no module group {', '.join(map(repr, unknown))}; "
                f"its groups: {', '.join(self.groups())}"
            )

    def module_group(self, name: str) -> str:
        """The group of the parameter or module `name` (most specific matching pattern)."""
        best, best_rank = None, None
        for group, patterns in self.module_patterns.items():
            for pattern in patterns:
                if _pattern_regex(pattern).match(name):
                    rank = (pattern.count(".") + 1, -pattern.count("*"))
                    if best_rank is None or rank > best_rank:
                        best, best_rank = group, rank
        if best is None:
            raise KeyError(f"{self.family} adapter: parameter '{name}' belongs to no module group")
        return best

    def parameter_groups(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Every parameter of `model` in exactly one of the family's groups (an unknown one raises)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in self.module_patterns}
        for name, param in model.named_parameters():
            groups[self.module_group(_strip_peft(name))].append((name, param))
        return groups

    def routers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, module) of every MoE router, in layer order: the modules whose path is one of the
        `router` group's patterns exactly (empty for a dense family)."""
        patterns = [_exact_regex(p) for p in self.module_patterns.get("router", ())]
        return [(n, m) for n, m in unwrap(model).named_modules() if any(r.match(n) for r in patterns)]

    def lora_targets(self, model: nn.Module, parts: Sequence[str]) -> tuple[list[str], list[str]]:
        """(peft `target_modules`, peft `target_parameters`): the full names of the Linear layers
        and fused parameters of the groups `parts` that LoRA adapts, each in its own group only
        (a language-model leaf name inside an MoE router stays out of `language`)."""
        modules, parameters = [], []
        for name, module in model.named_modules():
            leaf = name.rpartition(".")[2]
            if isinstance(module, nn.Linear) and name:
                group = self.module_group(name)
                if group in parts and leaf in self.lora_modules.get(group, ()):
                    modules.append(name)
        for name, _ in model.named_parameters():
            module, _, leaf = name.rpartition(".")
            group = self.module_group(name)
            if group in parts and leaf in self.lora_parameters.get(group, ()):
                parameters.append(name)
        return modules, parameters

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


@cache
def _pattern_regex(pattern: str) -> re.Pattern:
    """`pattern` (dotted path, `*` for one component) matching itself and everything under it."""
    body = r"[^.]+".join(re.escape(part) for part in pattern.split("*"))
    return re.compile(rf"{body}(?:\..*)?$")


@cache
def _exact_regex(pattern: str) -> re.Pattern:
    """`pattern` (dotted path, `*` for one component) matching exactly that path."""
    return re.compile(r"[^.]+".join(re.escape(part) for part in pattern.split("*")) + "$")


def _strip_peft(name: str) -> str:
    """Parameter names inside a peft model gain wrappers; group them by the original path."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")
