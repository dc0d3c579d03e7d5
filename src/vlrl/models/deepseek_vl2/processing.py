"""DeepSeek-VL2's processor: dynamic tiling, the 2-D image-token layout and the DeepSeek chat format.

Written after the original `deepseek_vl2/models/processing_deepseek_vl_v2.py` (deepseek-ai/DeepSeek-VL2)
and vLLM's copy of it (`vllm/transformers_utils/processors/deepseek_vl2.py`), whose numbers it must
reproduce exactly: vLLM's server expands the prompt's `<image>` tokens itself, and vlrl compares the
server's prompt ids with its own.

An image becomes tiles of S x S pixels (S = the first candidate resolution's width, 384 for the real
checkpoints), in order:
- the global view: the whole image resized into S x S keeping its aspect ratio, centred and padded with
  the mean colour (`PIL.ImageOps.pad`);
- the local views: the image padded the same way into the candidate resolution (W, H) that keeps most
  of its pixels (`select_best_resolution`), cut row-major into (W / S) x (H / S) tiles. With more than
  two images in a prompt every image gets one S x S local tile instead (the original's `cropping`).

Each tile is h x w = ceil((S // patch) / downsample_ratio)^2 tokens after the projector's 2x2 merge.
The language model sees, per image, the global view's rows each closed by a newline embedding, one
view separator, then the local tiles' rows stitched across the width, each closed by a newline:
h * (w + 1) + 1 + (th * h) * (tw * w + 1) `<image>` tokens for th x tw tiles.

`__init__` takes the fields of the real checkpoints' `processor_config.json`, so that `AutoProcessor`
loads them as it loads ours; like the original it makes sure the tokenizer has the pad, image,
grounding and role tokens as special tokens (adding only those it lacks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps
from transformers import BatchFeature, ProcessorMixin

# The original's special tokens for grounding (`<|ref|>` ... `<|grounding|>`) and for its chat roles.
GROUNDING_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")
EOS = "<｜end▁of▁sentence｜>"

# The "deepseek" conversation template of the original `conversation.py` (SeparatorStyle.DeepSeek,
# sep "\n\n", sep2 the end-of-sentence token): "{system}\n\n" when there is one, "<|User|>: {text}\n\n",
# "<|Assistant|>: {text}<｜end▁of▁sentence｜>", and "<|Assistant|>:" to prompt an answer. Messages are
# stripped, as the original strips them; an image part is "<image>\n", as in the original examples.
CHAT_TEMPLATE = (
    "{%- macro render(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- set text = render(message) | trim -%}"
    "{%- if message['role'] == 'system' -%}{%- if text -%}{{ text + '\\n\\n' }}{%- endif -%}"
    "{%- elif message['role'] == 'user' -%}{{ '<|User|>: ' + text + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<|Assistant|>: ' + text + '" + EOS + "' }}"
    "{%- else -%}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|Assistant|>:' }}{%- endif -%}"
)


def select_best_resolution(size: tuple[int, int], candidates: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The candidate (width, height) that keeps most of an image of `size` (width, height) when the
    image is scaled to fit inside it, ties going to the one that wastes least area, then to the
    earlier one (the original's `select_best_resolution`).

    Kept pixels: (int(w * s) * int(h * s)) with s = min(W / w, H / h), capped at w * h (upscaling
    adds no detail); waste: W * H minus the kept pixels.
    """
    w, h = size
    best, best_key = None, None
    for cw, ch in candidates:
        scale = min(cw / w, ch / h)
        kept = min(int(w * scale) * int(h * scale), w * h)
        key = (kept, -(cw * ch - kept))
        if best_key is None or key > best_key:
            best, best_key = (cw, ch), key
    return best


def tokens_per_side(tile: int, patch: int, downsample_ratio: float) -> int:
    """Tokens along one side of a tile after the projector's merge: ceil((tile // patch) / ratio)."""
    return math.ceil((tile // patch) / downsample_ratio)


def image_token_count(side: int, tiles: tuple[int, int]) -> int:
    """`<image>` tokens of one image with `tiles` = (width tiles, height tiles) local tiles and
    `side` tokens per tile side: the global view's rows with a newline each, the view separator,
    and the local tiles' stitched rows with a newline each."""
    tw, th = tiles
    return side * (side + 1) + 1 + (th * side) * (tw * side + 1)


class DeepseekVLV2ImageProcessor:
    """The image half of the processor: tiling, padding and normalisation (see the module docstring).

    A plain object built from the processor's own fields: the released checkpoints have no
    preprocessor_config.json, their processor_config.json holds everything.
    """

    def __init__(
        self,
        candidate_resolutions: Sequence[Sequence[int]],
        patch_size: int,
        downsample_ratio: float,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        normalize: bool,
    ):
        self.candidate_resolutions = [list(map(int, r)) for r in candidate_resolutions]
        # the tile size: the first candidate's width, as in the original
        self.image_size = self.candidate_resolutions[0][0]
        for w, h in self.candidate_resolutions:
            if w % self.image_size or h % self.image_size:
                raise ValueError(
                    f"DeepseekVLV2Processor: candidate_resolutions holds {[w, h]}, not a multiple of the "
                    f"tile size {self.image_size} (the first candidate's width)"
                )
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.image_mean = np.asarray(image_mean, np.float32)
        self.image_std = np.asarray(image_std, np.float32)
        self.normalize = normalize

    def tiling(self, size: tuple[int, int], cropping: bool = True) -> tuple[int, int]:
        """(width tiles, height tiles) of the local views of an image of `size` (width, height)."""
        if not cropping:
            return (1, 1)
        w, h = select_best_resolution(size, self.candidate_resolutions)
        return (w // self.image_size, h // self.image_size)

    def num_image_tokens(self, size: tuple[int, int], cropping: bool = True) -> int:
        """`<image>` tokens one image of `size` (width, height) expands into."""
        side = tokens_per_side(self.image_size, self.patch_size, self.downsample_ratio)
        return image_token_count(side, self.tiling(size, cropping))

    def __call__(self, image: Image.Image, cropping: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
        """([1 + tw * th, 3, S, S] float32 tiles, (tw, th)): the global view, then the local tiles
        row-major, each normalised as the original's ToTensor + Normalize."""
        image = image.convert("RGB")
        S = self.image_size
        tw, th = self.tiling(image.size, cropping)
        fill = tuple(int(m * 255) for m in self.image_mean.tolist())  # the original pads with the mean colour
        global_view = ImageOps.pad(image, (S, S), color=fill)
        local = ImageOps.pad(image, (tw * S, th * S), color=fill)
        views = [global_view] + [
            local.crop((x * S, y * S, (x + 1) * S, (y + 1) * S)) for y in range(th) for x in range(tw)
        ]
        return np.stack([self._normalise(v) for v in views]), (tw, th)

    def _normalise(self, view: Image.Image) -> np.ndarray:
        """[3, S, S] float32: pixels / 255, then (x - mean) / std per channel when `normalize`."""
        x = np.asarray(view, dtype=np.float32) / np.float32(255)
        if self.normalize:
            x = (x - self.image_mean) / self.image_std
        return x.transpose(2, 0, 1)


class DeepseekVLV2Processor(ProcessorMixin):
    """Tokenizer plus DeepSeek-VL2's image processing (`image_processor`, see the module docstring).

    `processor(text=[prompt, ...], images=[...])` -> `input_ids` / `attention_mask` [B, L] (left
    padded, BOS first), `pixel_values` [tiles, 3, S, S] (per image: global view, then its local tiles
    row-major) and `images_spatial_crop` [images, 2] = (width tiles, height tiles). A prompt's
    images are the next ones of `images`, one per `<image>` in its text. The fields the original
    uses only for training labels (`mask_prompt`, `ignore_id`) or not at all (`add_special_token`)
    are kept for the saved config.
    """

    def __init__(
        self,
        tokenizer,
        candidate_resolutions: Sequence[Sequence[int]] = ((384, 384),),
        patch_size: int = 14,
        downsample_ratio: float = 2,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        normalize: bool = True,
        image_token: str = "<image>",
        pad_token: str = "<｜▁pad▁｜>",
        add_special_token: bool = False,
        sft_format: str = "deepseek",
        mask_prompt: bool = True,
        ignore_id: int = -100,
        chat_template: str | None = None,
    ):
        if sft_format != "deepseek":
            raise ValueError(
                f"DeepseekVLV2Processor: sft_format {sft_format!r} is not supported (only 'deepseek', "
                "the format of the released checkpoints)"
            )
        self.image_processor = DeepseekVLV2ImageProcessor(
            candidate_resolutions, patch_size, downsample_ratio, image_mean, image_std, normalize
        )
        self.candidate_resolutions = self.image_processor.candidate_resolutions
        self.image_size = self.image_processor.image_size
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.normalize = normalize
        self.image_token = image_token
        self.pad_token = pad_token
        self.add_special_token = add_special_token
        self.sft_format = sft_format
        self.mask_prompt = mask_prompt
        self.ignore_id = ignore_id
        if tokenizer.bos_token_id is None:
            raise ValueError(
                "DeepseekVLV2Processor: the tokenizer has no bos_token (tokenizer_config.json), which every "
                "DeepSeek-VL2 prompt starts with"
            )
        _ensure_tokens(tokenizer, image_token, pad_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    def num_image_tokens(self, size: tuple[int, int], cropping: bool = True) -> int:
        """`<image>` tokens one image of `size` (width, height) expands into."""
        return self.image_processor.num_image_tokens(size, cropping)

    # ---- text -----------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Token ids and pixel tiles of `text` (one prompt or a list) and its `images`, in order."""
        if text is None:
            raise ValueError("DeepseekVLV2Processor needs text (with one <image> per image)")
        texts = [text] if isinstance(text, str) else list(text)
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images or [])
        needed = sum(t.count(self.image_token) for t in texts)
        if needed != len(images):
            raise ValueError(
                f"DeepseekVLV2Processor: the text holds {needed} {self.image_token} placeholders "
                f"for {len(images)} images"
            )
        rows, tiles, crops, start = [], [], [], 0
        for prompt in texts:
            n = prompt.count(self.image_token)
            ids, prompt_tiles, prompt_crops = self._encode(prompt, images[start : start + n])
            rows.append(ids)
            tiles += prompt_tiles
            crops += prompt_crops
            start += n
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        # left padding, as the original's batchify
        data = {
            "input_ids": [[pad] * (width - len(r)) + r for r in rows],
            "attention_mask": [[0] * (width - len(r)) + [1] * len(r) for r in rows],
        }
        if tiles:
            data["pixel_values"] = np.concatenate(tiles)
            data["images_spatial_crop"] = np.asarray(crops, dtype=np.int64)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _encode(
        self, prompt: str, images: list[Image.Image]
    ) -> tuple[list[int], list[np.ndarray], list[tuple[int, int]]]:
        """One prompt's ids (BOS, then its text pieces and image tokens in order), its images'
        tiles and tilings. Text pieces are tokenised one by one, as the original does."""
        cropping = len(images) <= 2
        pieces = prompt.split(self.image_token)
        ids = [self.tokenizer.bos_token_id]
        tiles, crops = [], []
        side = tokens_per_side(self.image_size, self.patch_size, self.downsample_ratio)
        for piece, image in zip(pieces, [*images, None], strict=True):
            ids += self.tokenizer.encode(piece, add_special_tokens=False)
            if image is None:
                break
            views, tiling = self.image_processor(image, cropping)
            tiles.append(views)
            crops.append(tiling)
            ids += [self.image_token_id] * image_token_count(side, tiling)
        return ids, tiles, crops

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "images_spatial_crop"]


def _ensure_tokens(tokenizer, image_token: str, pad_token: str) -> None:
    """Give `tokenizer` the pad, image, grounding and role tokens as special tokens, as the original
    processor does at load (the released tokenizers already hold them all: nothing gets a new id)."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": pad_token})
    wanted = [image_token, *GROUNDING_TOKENS, *ROLE_TOKENS]
    missing = [t for t in wanted if t not in tokenizer.all_special_tokens]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
