"""A real byte-level BPE tokenizer trained offline on the synthetic tasks' text.

Tiny models learn much faster with a small vocabulary whose merges fit the task text (a few
hundred tokens instead of Qwen's 151k), and byte-level BPE still encodes any string, so user text
never hits an unknown token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

EOS = "<|endoftext|>"


def train_bpe(
    corpus: Iterable[str],
    special_tokens: list[str],
    vocab_size: int = 400,
    extra_special_tokens: dict[str, str] | None = None,
    eos_token: str = "<|im_end|>",
) -> Qwen2Tokenizer:
    """Train byte-level BPE on `corpus` and wrap it as a `Qwen2Tokenizer`.

    Special tokens get ids after the learned vocabulary, as in Qwen's real tokenizers.
    `extra_special_tokens` names some of them as tokenizer attributes (InternVL's processor reads
    `tokenizer.context_image_token`, for example).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS],
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        # transformers wants merges as pairs; the serialised form is a list of 2-lists.
        merges=[tuple(pair) for pair in model["merges"]],
        unk_token=None,
        eos_token=EOS,
        pad_token=EOS,
        errors="replace",
        extra_special_tokens=extra_special_tokens or {},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    tokenizer.eos_token = eos_token
    return tokenizer
