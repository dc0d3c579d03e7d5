"""Where `vlrl serve` takes request images from: data URLs, and paths only under `--image-root`."""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from vlrl.serving.errors import RequestError
from vlrl.serving.images import ImageSource

WHERE = "messages[0].content[1]"


def refusal(path: str) -> str:
    return f"{WHERE}: '{path}' is not a readable image file under the server's --image-root"


@pytest.fixture
def disk(tmp_path, images):
    """root/ (served) holding ok.png, a folder, a FIFO, links; outside/ (not served) holding secret.png."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "folder").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(images["small"], root / "ok.png")
    shutil.copy(images["small"], outside / "secret.png")
    os.mkfifo(root / "fifo.png")
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "link_in.png").symlink_to(root / "ok.png")
    return root, outside


def test_paths_outside_the_roots_or_not_regular_files_get_one_and_the_same_refusal(disk):
    """Missing, outside, escaping by .. or by a symlink, a folder, a FIFO (which would block the
    thread if opened), a path through a file, a NUL byte: a client cannot tell them apart."""
    root, outside = disk
    source = ImageSource.from_options([root])
    bad = [
        root / "missing.png",
        outside / "secret.png",
        root / ".." / "outside" / "secret.png",
        root / "link_out.png",
        root / "folder",
        root / "fifo.png",
        root / "ok.png" / "x.png",
        f"{root}/ok.png\x00",
    ]
    for path in map(str, bad):
        for url in (path, "file://" + path):
            with pytest.raises(RequestError) as info:
                source.open(url, WHERE)
            assert info.value.message == refusal(path), url


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_gets_the_same_refusal(disk):
    root, _ = disk
    (root / "ok.png").chmod(0)
    with pytest.raises(RequestError) as info:
        ImageSource.from_options([root]).open(str(root / "ok.png"), WHERE)
    assert info.value.message == refusal(str(root / "ok.png"))


def test_files_under_a_root_are_served_whatever_the_path_spelling(disk, tmp_path):
    root, _ = disk
    (tmp_path / "other").mkdir()
    (tmp_path / "root_link").symlink_to(root)  # a root given through a symlink is resolved too
    source = ImageSource.from_options([tmp_path / "other", tmp_path / "root_link"])
    for path in [
        root / "ok.png",
        root / "link_in.png",
        root / "folder" / ".." / "ok.png",
        tmp_path / "root_link" / "ok.png",
    ]:
        assert source.open(str(path), WHERE).size == (112, 112)
    assert source.open((root / "ok.png").as_uri(), WHERE).size == (112, 112)


def test_without_a_root_only_data_urls_are_served(disk, images):
    root, _ = disk
    source = ImageSource.from_options()
    with pytest.raises(
        RequestError, match=r"image paths are not served here \(the server has no --image-root\)"
    ):
        source.open(str(root / "ok.png"), WHERE)
    url = "data:image/png;base64," + base64.b64encode(images["small"].read_bytes()).decode()
    assert source.open(url, WHERE).size == (112, 112)


def test_max_pixels_is_checked_from_the_header_for_data_urls_and_paths(disk, png_header):
    root, _ = disk
    (root / "bomb.png").write_bytes(png_header(12000, 12000))
    data = "data:image/png;base64," + base64.b64encode(png_header(12000, 12000)).decode()
    over = "is 12000x12000 = 144,000,000 pixels, over the limit of 64,000,000 pixels (--max-image-pixels)"
    source = ImageSource.from_options([root])
    for url, name in [(data, "image data"), (str(root / "bomb.png"), f"image '{root / 'bomb.png'}'")]:
        with pytest.raises(RequestError) as info:
            source.open(url, WHERE)
        assert info.value.message.startswith(f"{WHERE}: {name} {over}")
    # The limit is the option's: 112 x 112 = 12544 pixels.
    with pytest.raises(RequestError, match="is 112x112 = 12,544 pixels, over the limit of 12,543 pixels"):
        ImageSource.from_options([root], max_pixels=12543).open(str(root / "ok.png"), WHERE)
    assert ImageSource.from_options([root], max_pixels=12544).open(str(root / "ok.png"), WHERE).size == (
        112,
        112,
    )


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match=f"--image-root '{tmp_path / 'nope'}' is not a directory"):
        ImageSource.from_options([tmp_path, tmp_path / "nope"])
    with pytest.raises(ValueError, match="--max-image-pixels must be at least 1, got -1"):
        ImageSource.from_options([], max_pixels=-1)
