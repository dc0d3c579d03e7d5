"""The config reference: docs/config.md is the generated text, and it documents every key."""

from pathlib import Path

from pydantic import BaseModel

from vlrl.cli import main
from vlrl.config import SFTConfig, TrainConfig, reference_markdown
from vlrl.config.keys import section_type
from vlrl.config.reference import REFRESH_COMMAND, type_text

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _leaf_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in schema.model_fields.items():
        section = section_type(field)
        keys += [f"{prefix}{name}"] if section is None else _leaf_keys(section, f"{prefix}{name}.")
    return keys


def test_docs_config_md_is_the_generated_reference():
    assert DOCS.read_text() == reference_markdown(), f"docs/config.md is out of date: run `{REFRESH_COMMAND}`"


def test_every_key_of_both_schemas_has_a_row():
    text = reference_markdown()
    keys = set(_leaf_keys(TrainConfig)) | set(_leaf_keys(SFTConfig))
    assert {"model.lora.r", "sft.stop_at_acc", "stages", "monitor.window"} <= keys
    missing = sorted(key for key in keys if f"| `{key}` |" not in text)
    assert missing == []


def test_rows_give_type_bounds_default_and_description():
    lines = reference_markdown().splitlines()
    assert "| `model.lora.dropout` | float, >= 0, < 1 | `0.05` | Dropout on the LoRA input. |" in lines
    # Required keys say so; path keys say they are paths (the path rule is written once, above).
    assert (
        "| `model.path` | str (path) | **required** (`???`) |"
        " Checkpoint folder (Hugging Face layout) to start training from. |"
    ) in lines
    assert "| `reward.weights` | list[float] or null | `null` |" in "\n".join(lines)
    assert '| `rollout.backend` | one of hf, vllm, server | `"hf"` |' in "\n".join(lines)


def test_sections_shared_by_both_schemas_are_written_once():
    text = reference_markdown()
    assert text.count("### `model`\n") == 1
    assert text.count("### `sft`\n") == 1
    assert "| `model` | section (as under `vlrl train` above) |" in text


def test_type_text_reads_literals_and_optionals():
    assert type_text(int | None) == "int or null"
    assert type_text(dict[str, list[int]]) == "dict[str, list[int]]"


def test_vlrl_config_reference_prints_it(capsys):
    assert main(["config", "--reference"]) == 0
    assert capsys.readouterr().out == reference_markdown()
