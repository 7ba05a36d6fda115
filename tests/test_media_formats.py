"""Media formats users hand in: images (EXIF orientation, 16-bit, palette/alpha/CMYK, gif/bmp/tiff), audio
(m4a, opus, webm), the skip reason that names a member no adapter reads, truncated and variable-frame-rate
video, and decoder errors in words a person understands."""
from __future__ import annotations

import base64
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from modalities import BadSample
from modalities.vision import decode_image

from conftest import ASSETS


# ---------------------------------------------------------------- images

def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _pattern(w: int = 40, h: int = 24) -> np.ndarray:
    """An asymmetric RGB picture: a rotation or a flip of it is never equal to it."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x < 6) * 200], -1).astype(np.uint8)


@pytest.mark.parametrize("orientation, expect", [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(orientation, expect):
    """A phone photo is stored as the sensor saw it, with a tag saying how to turn it: 6 = turn 90 degrees
    clockwise to view. The decoded image is the upright one."""
    a = _pattern()
    exif = Image.Exif()
    exif[274] = orientation
    got = np.asarray(decode_image(_png(Image.fromarray(a), exif=exif.tobytes())))
    want = expect(a)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_exif_orientation_in_a_jpeg():
    a = _pattern(64, 32)
    exif = Image.Exif()
    exif[274] = 6
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    got = np.asarray(decode_image(buf.getvalue())).astype(int)
    assert got.shape == (64, 32, 3)  # portrait: width and height swapped
    assert np.abs(got - np.rot90(a, -1)).mean() < 4


def test_16_bit_png_keeps_its_tones():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    data = _png(img)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    got = np.asarray(decode_image(data))
    assert got.shape == (8, 64, 3) and (got[..., 0] == got[..., 1]).all()
    np.testing.assert_allclose(got[0, :, 0], np.rint(ramp[0] / 257), atol=1)
    assert got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and 120 <= got[0, 32, 0] <= 136  # not all white


def test_32_bit_grey_holding_16_bit_values():
    vals = np.array([[0, 1000, 30000, 65535]], dtype=np.int32)
    buf = io.BytesIO()
    Image.fromarray(vals).save(buf, "TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I"
    got = np.asarray(decode_image(buf.getvalue()))[0, :, 0]
    np.testing.assert_allclose(got, np.rint(vals[0] / 257), atol=1)


def test_palette_with_transparency_is_laid_over_white():
    p = Image.new("P", (4, 2), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    got = np.asarray(decode_image(_png(p, transparency=0)))
    assert tuple(got[0, 1]) == (255, 0, 0)  # the opaque red pixel
    assert tuple(got[0, 0]) == (255, 255, 255)  # palette entry 0 (black) is transparent: white, not black


def test_la_and_rgba_are_laid_over_white():
    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0] = (50, 255)  # opaque dark grey; the rest black but transparent
    got = np.asarray(decode_image(_png(Image.fromarray(la, "LA"))))
    assert tuple(got[0, 0]) == (50, 50, 50) and tuple(got[1, 1]) == (255, 255, 255)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 128  # half transparent black over white: mid grey
    got = np.asarray(decode_image(_png(Image.fromarray(rgba, "RGBA"))))
    assert 120 <= got[0, 0, 0] <= 135


def test_cmyk_and_palette_become_rgb():
    a = _pattern()
    buf = io.BytesIO()
    Image.fromarray(a).convert("CMYK").save(buf, "TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
    got = np.asarray(decode_image(buf.getvalue())).astype(int)
    assert got.shape == a.shape and np.abs(got - a).max() <= 2
    pal = Image.fromarray(a).quantize(64)
    got = np.asarray(decode_image(_png(pal))).astype(int)
    assert got.shape == a.shape and np.abs(got - a).mean() < 12


@pytest.mark.parametrize("fmt, ext", [("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"), ("TIFF", "tif")])
def test_gif_bmp_tiff_are_read_by_the_image_adapter(fmt, ext, tiny_vit):
    from modalities import ImageAdapter, MultiImageAdapter
    assert ext in ImageAdapter.extensions and ext in MultiImageAdapter.extensions
    a = _pattern()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    adapter = ImageAdapter(encoder=tiny_vit)
    item = adapter.preprocess(adapter.decode(buf.getvalue(), ext))
    assert item.shape == (3, 32, 32)
    got = np.asarray(decode_image(buf.getvalue())).astype(int)
    assert np.abs(got - a).mean() < (12 if fmt == "GIF" else 1)  # GIF: 256 colours
