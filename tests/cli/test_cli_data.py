"""`vlrl data FILE --image-root DIR --max-image-pixels N`: the image options of data checking."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlrl.cli import main


def test_image_root_and_pixel_limit(tmp_path, capsys):
    (tmp_path / "ann").mkdir()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images/a.png")
    data = tmp_path / "ann/train.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a", "image": "a.png"}) + "\n")

    assert main(["data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:1 field 'images'" in err and "set data.image_root / --image-root" in err

    assert main(["data", str(data), "--image-root", str(tmp_path / "images")]) == 0
    assert "train.jsonl: 1/1 rows loaded" in capsys.readouterr().out

    assert (
        main(["data", str(data), "--image-root", str(tmp_path / "images"), "--max-image-pixels", "15"]) == 2
    )
    assert "4x4" in capsys.readouterr().err
    assert (
        main(["data", str(data), "--image-root", str(tmp_path / "images"), "--max-image-pixels", "none"]) == 0
    )
    with pytest.raises(SystemExit):
        main(["data", str(data), "--max-image-pixels", "lots"])
    assert "takes a positive number of pixels or 'none', got 'lots'" in capsys.readouterr().err
