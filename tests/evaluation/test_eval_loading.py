"""`vlrl eval` loads a vlrl-written folder with its image processor, and refuses a bare tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoTokenizer

import vlrl.models.loading
from vlrl.cli import main


def test_eval_loads_the_image_processor_in_an_interpreter_that_never_imported_vlrl(tiny_models):
    # Only eval's own module is imported; what it loads through is checked by a plain
    # AutoProcessor call too, as a user's script would make after the import.
    code = (
        "import sys\n"
        "assert 'vlrl' not in sys.modules\n"
        "import vlrl.evaluation.runner\n"
        "from transformers import AutoProcessor\n"
        "from vlrl.models.loading import load_model\n"
        f"folder = {str(tiny_models['qwen2_vl'])!r}\n"
        "print(type(load_model(folder).processor.image_processor).__name__)\n"
        "print(type(AutoProcessor.from_pretrained(folder)).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    image_processor, processor = out.split()
    assert image_processor.startswith("Qwen2VLImageProcessor")  # the PIL or the torchvision one
    assert processor == "Qwen2VLImageOnlyProcessor"


class TokenizerOnly:
    """AutoProcessor as it behaves for a processor class it does not know: a bare tokenizer."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        return AutoTokenizer.from_pretrained(path)


def test_a_folder_loading_as_a_bare_tokenizer_is_one_line(tiny_models, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(vlrl.models.loading, "torchvision_usable", lambda: True)
    monkeypatch.setattr(vlrl.models.loading, "AutoProcessor", TokenizerOnly)
    data = tmp_path / "bench.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    folder = tiny_models["qwen2_vl"]
    assert main(["eval", "--model", str(folder), "--data", str(data), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"vlrl eval: error: '{folder}' has no usable image processor: AutoProcessor returned"
    )
    assert line.endswith("or install torchvision")
