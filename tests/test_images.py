"""Reading user images (docs/DESIGN.md 10): safe conversions, EXIF rotation, refusals with one clear line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from icv_deploy.errors import ImageError
from icv_deploy.images import load_image, to_tensor, to_uint8, working_size


def rgb(h=40, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip(tmp_path):
    arr = rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), arr)


def test_exif_rotation_is_applied(tmp_path):
    arr = rgb(40, 64)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (64, 40, 3)
    # the top-left of the displayed image is the bottom-left of the stored one
    stored = np.asarray(Image.open(tmp_path / "r.jpg").convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - np.rot90(stored, k=-1)).mean() < 1.0


def test_16_bit_greyscale_is_converted(tmp_path, caplog):
    grey = (np.linspace(0, 65535, 48 * 32).reshape(32, 48)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[..., 0].astype(float), grey / 257.0, atol=1.0)
    assert "8-bit" in caplog.text


def test_cmyk_and_alpha_are_converted(tmp_path, caplog):
    Image.fromarray(rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").shape == (40, 64, 3)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent except a square
    rgba[8:16, 8:16, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[10, 10]) == (255, 0, 0)
    assert "CMYK" in caplog.text and "alpha" in caplog.text


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("text", "not an image"), ("truncated", "truncated"), ("tiny", "too small"),
    ("folder", "folder"),
])
def test_bad_images_are_refused_with_one_line(tmp_path, case, message):
    path = tmp_path / "x.png"
    if case == "text":
        path.write_text("hello")
    elif case == "truncated":
        Image.fromarray(rgb(200, 200)).save(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif case == "tiny":
        Image.fromarray(rgb(8, 100)).save(path)
    elif case == "folder":
        path.mkdir()
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_arrays_are_checked():
    assert load_image(rgb()[..., 0]).shape == (40, 64, 3)
    with pytest.raises(ImageError, match="dtype"):
        load_image(rgb().astype(np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 40, 64), np.uint8))


def test_working_size():
    assert working_size(480, 640, 256, 8) == (192, 256)
    assert working_size(60, 84, None, 8) == (56, 80)  # native size rounded down, as diffusers does
    assert working_size(3000, 4000, None, 8) == (768, 1024)  # capped


def test_tensor_round_trip():
    arr = rgb()
    np.testing.assert_array_equal(to_uint8(to_tensor(arr))[0], arr)


def test_absurdly_large_images_are_refused(tmp_path, monkeypatch):
    import icv_deploy.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    Image.fromarray(rgb(200, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="pixels"):
        load_image(tmp_path / "big.png")
    with pytest.raises(ImageError, match="absurdly large"):
        load_image(rgb(200, 300))
