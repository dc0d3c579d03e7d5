"""The two prompts of Vision-R1's modality bridging (arXiv 2503.06749, Sec. 3.1).

A VLM turns the image(s) into a detailed description written for the question; a text-only
reasoning model (DeepSeek-R1 in the paper) then solves the question from that description alone.
The paper first has the VLM write a "pseudo-CoT" and then a description conditioned on it; here
the VLM is asked for the question-aware description directly, in one call per sample.
"""

from __future__ import annotations

import base64
from pathlib import Path

from PIL import Image

from vlrl.data.prompts import Template, user_text
from vlrl.data.sample import IMAGE_MARKER, Sample

DESCRIBE_PROMPT = "Describe the image in detail, including everything needed to answer: {question}"

REASON_PROMPT = (
    "You cannot see the image, but here is a detailed description of it.\n\n"
    "Image description:\n{description}\n\n"
    "Question:\n{question}\n\n"
    "Think through the problem step by step inside <think> </think> tags, then give only the final "
    "answer inside <answer> </answer> tags, i.e. <think> reasoning here </think><answer> answer here </answer>"
)

# The question with its options rendered as training prompts render them, and no instruction.
_PLAIN = Template("coldstart", None)


def describe_messages(sample: Sample) -> list[dict]:
    """OpenAI messages asking the VLM to describe `sample`'s images for its question.

    Images go where the question's `<image>` markers are, or before the text without markers, as
    in training prompts; each is sent as a base64 data URL.
    """
    prompt = Sample(
        id=sample.id,
        question=DESCRIBE_PROMPT.format(question=user_text(sample, _PLAIN)),
        answer=None,
        images=sample.images,
    )
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url(sample.images[s])}}
        if isinstance(s, int)
        else {"type": "text", "text": s}
        for s in prompt.segments()
    ]
    return [{"role": "user", "content": content}]


def reason_messages(sample: Sample, description: str) -> list[dict]:
    """OpenAI messages asking the text-only reasoner to solve `sample` from the image `description`."""
    question = _name_images(user_text(sample, _PLAIN))
    return [
        {"role": "user", "content": REASON_PROMPT.format(description=description.strip(), question=question)}
    ]


def image_data_url(path: str | Path) -> str:
    """`data:image/...;base64,...` holding the file's bytes as they are (no re-encoding)."""
    with Image.open(path) as im:
        mime = Image.MIME.get(im.format or "", "image/png")
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _name_images(question: str) -> str:
    """`<image>` markers as "[image 1]", "[image 2]", ...: the reasoner sees no images."""
    pieces = question.split(IMAGE_MARKER)
    named = [piece + f"[image {i}]" for i, piece in enumerate(pieces[:-1], 1)]
    return "".join([*named, pieces[-1]])
