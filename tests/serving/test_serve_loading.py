"""`vlrl serve` loads a vlrl-written folder with its image processor, and refuses a bare tokenizer."""

from __future__ import annotations

import subprocess
import sys

from transformers import AutoTokenizer

import vlrl.models.loading
from vlrl.cli import main


def test_serve_loads_the_image_processor_in_an_interpreter_that_never_imported_vlrl(tiny_models):
    # Only serve's own module is imported: importing it is what registers vlrl's processors.
    code = (
        "import sys\n"
        "assert 'vlrl' not in sys.modules\n"
        "from vlrl.serving.engine import load_engine\n"
        f"engine = load_engine({str(tiny_models['qwen2_vl'])!r})\n"
        "print(type(engine.adapter.processor.image_processor).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.startswith("Qwen2VLImageProcessor")  # the PIL or the torchvision one


class TokenizerOnly:
    """AutoProcessor as it behaves for a processor class it does not know: a bare tokenizer."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        return AutoTokenizer.from_pretrained(path)


def test_a_folder_loading_as_a_bare_tokenizer_is_one_line(tiny_models, monkeypatch, capsys):
    monkeypatch.setattr(vlrl.models.loading, "torchvision_usable", lambda: True)
    monkeypatch.setattr(vlrl.models.loading, "AutoProcessor", TokenizerOnly)
    folder = tiny_models["qwen2_vl"]
    assert main(["serve", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"vlrl serve: error: '{folder}' has no usable image processor: AutoProcessor returned a bare "
        "Qwen2Tokenizer (processor_config.json names Qwen2VLImageOnlyProcessor, which transformers does not "
        "know); copy the processor files of the model it was trained from into the folder, or install "
        "torchvision\n"
    )
