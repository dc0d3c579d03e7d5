"""The one image loader: EXIF orientation, transparency onto white, the decompression guard."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from vlrl.data.images import ImageError, ImageTooLargeError, image_size, load_image, verify_image

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` but holds one tiny IDAT: megapixels in ~60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def close(pixel, colour, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def test_exif_orientation_is_applied(tmp_path):
    # 16x8, left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to
    # display", so upright it is 8 wide and 16 tall, red on top (the old left column) and blue below
    im = Image.new("RGB", (16, 8), BLUE)
    im.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=95)

    upright = load_image(path)
    assert upright.mode == "RGB" and upright.size == (8, 16)
    assert close(upright.getpixel((4, 3)), RED) and close(upright.getpixel((4, 12)), BLUE)
    assert image_size(path) == (8, 16)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(tmp_path, mode):
    # a black stroke (row 1) on a fully transparent background whose hidden colour is black
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 1, 4, 2))
    path = tmp_path / f"diagram_{mode}.png"
    if mode == "P":
        # palette entry 0: transparent black, entry 1: opaque black
        im = Image.new("P", (4, 4), 0)
        im.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
        im.paste(1, (0, 1, 4, 2))
        im.save(path, transparency=0)
    else:
        rgba.convert(mode).save(path)

    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((2, 0)) == WHITE and out.getpixel((2, 3)) == WHITE
    assert out.getpixel((2, 1)) == BLACK


def test_half_transparent_pixel_is_blended_with_white(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (1, 1), (0, 0, 0, 128)).save(path)
    # 128/255 of black over white: 255 * (1 - 128/255) = 127
    assert load_image(path).getpixel((0, 0)) == (127, 127, 127)


def test_huge_declared_size_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(12000, 12000))

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for check in (load_image, verify_image):
        with pytest.raises(ImageTooLargeError) as caught:
            check(path)
        message = str(caught.value)
        assert "bomb.png" in message and "12000x12000" in message, message
        assert (
            "144,000,000 pixels" in message and "64,000,000" in message and "data.max_image_pixels" in message
        )


def test_limit_is_a_parameter(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (10, 10), RED).save(path)
    with pytest.raises(ImageTooLargeError, match="10x10"):
        load_image(path, max_pixels=99)
    assert load_image(path, max_pixels=100).size == (10, 10)
    assert load_image(path, max_pixels=None).size == (10, 10)


def test_bytes_input():
    buf = io.BytesIO()
    Image.new("L", (3, 2), 255).save(buf, format="PNG")
    im = load_image(buf.getvalue())
    assert im.mode == "RGB" and im.size == (3, 2) and im.getpixel((0, 0)) == WHITE
    with pytest.raises(ImageError, match="cannot read image data"):
        load_image(b"not an image")
    with pytest.raises(ImageTooLargeError, match="image data is 12000x12000"):
        load_image(png_header_only(12000, 12000))


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"cannot read image '.*garbage\.png'"):
        load_image(path)
    with pytest.raises(ImageError, match=r"absent\.png"):
        load_image(tmp_path / "absent.png")


def test_old_import_path_still_works():
    from vlrl.models.adapters import ImageError as AdapterImageError
    from vlrl.models.adapters import image_size as adapter_image_size
    from vlrl.models.adapters import load_image as adapter_load_image

    assert (AdapterImageError, adapter_image_size, adapter_load_image) == (ImageError, image_size, load_image)


def test_loading_images_does_not_rearm_the_processes_warnings(tmp_path, recwarn):
    """`warnings.catch_warnings()` resets the once-per-place registry: loading one image per sample
    inside it made every library warning (transformers' deprecations) repeat at every sample."""
    import warnings

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)

    def deprecated():
        warnings.warn("old API", FutureWarning, stacklevel=1)

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # Python's own: once per place
        for _ in range(3):
            deprecated()
            load_image(path)
    assert [str(w.message) for w in recwarn if w.category is FutureWarning] == ["old API"]
