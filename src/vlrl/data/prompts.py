"""Prompt templates: how a `Sample` becomes chat messages.

A template is a system prompt plus an instruction appended to the user's question. The chat
format itself (special tokens, where image placeholders go) belongs to the model's own chat
template; here we only produce model-independent messages whose content is a list of
`{"type": "image"}` and `{"type": "text"}` parts in reading order.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from vlrl.data.sample import Sample

R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question about the image, and the "
    "Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>"
)
CAPTION_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question about the image, and the "
    "Assistant solves it. The Assistant first describes the image within <caption> </caption> tags, "
    "then thinks about the reasoning process within <think> </think> tags, and finally gives the "
    "answer within <answer> </answer> tags, i.e., <caption> image description here </caption>"
    "<think> reasoning process here </think><answer> answer here </answer>"
)


@dataclass(frozen=True)
class Template:
    """A named prompt style. `instruction` is appended to the question after a blank line."""

    name: str
    system_prompt: str | None
    instruction: str = ""


TEMPLATES: dict[str, Template] = {
    "think_answer": Template("think_answer", R1_SYSTEM),
    "caption_think_answer": Template("caption_think_answer", CAPTION_SYSTEM),
    "answer_only": Template("answer_only", None, "Answer with only the final answer."),
}


def get_template(name: str, system_prompt: str | None = None, instruction: str | None = None) -> Template:
    """A registered template, or a user one built from `system_prompt` / `instruction`.

    Giving `system_prompt` or `instruction` with a registered name overrides that part of it.
    """
    if name not in TEMPLATES:
        if system_prompt is None and instruction is None:
            raise ValueError(
                f"unknown prompt template '{name}'; valid: {', '.join(sorted(TEMPLATES))}, or give "
                "data.system_prompt to define your own"
            )
        return Template(name, system_prompt, instruction or "")
    base = TEMPLATES[name]
    return Template(
        name,
        base.system_prompt if system_prompt is None else system_prompt,
        base.instruction if instruction is None else instruction,
    )


def option_letter(i: int) -> str:
    return string.ascii_uppercase[i]


def render_choices(choices: list[str]) -> str:
    """MCQ options, one per line, always as `A. text` so rewards and eval parse one style."""
    return "\n".join(f"{option_letter(i)}. {c}" for i, c in enumerate(choices))


def user_text(sample: Sample, template: Template) -> str:
    """The question with its options and the template's instruction (image markers kept)."""
    parts = [sample.question.strip()]
    if sample.choices:
        parts.append("Options:\n" + render_choices(sample.choices))
    if template.instruction:
        parts.append(template.instruction)
    return "\n".join(parts)


def build_messages(sample: Sample, template: Template, response: str | None = None) -> list[dict]:
    """Chat messages for `sample`; with `response`, the assistant turn is appended (SFT)."""
    rendered = Sample(id=sample.id, question=user_text(sample, template), answer=None, images=sample.images)
    content = [
        {"type": "image"} if isinstance(s, int) else {"type": "text", "text": s} for s in rendered.segments()
    ]
    messages = []
    if template.system_prompt:
        messages.append({"role": "system", "content": template.system_prompt})
    messages.append({"role": "user", "content": content})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages
