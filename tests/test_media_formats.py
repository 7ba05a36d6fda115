"""Media formats users hand in: images (EXIF orientation, 16-bit, palette/alpha/CMYK, gif/bmp/tiff), audio
(m4a, opus, webm), the skip reason that names a member no adapter reads, truncated and variable-frame-rate
video, and decoder errors in words a person understands."""
from __future__ import annotations

import base64
import io
import json
import struct
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


# ---------------------------------------------------------------- audio

# 0.4 s of a 440 Hz tone at 16 kHz, mono, made with FFmpeg 6 (`-f lavfi -i sine=frequency=440:sample_rate=16000:duration=0.4`):
# AAC 24 kb/s in an .m4a (moov first), and Opus 12 kb/s in a WebM. Embedded so the test needs no encoder.
M4A_TONE = (
    "AAAAHGZ0eXBNNEEgAAACAE00QSBpc29taXNvMgAAAxttb292AAAAbG12aGQAAAAAAAAAAAAAAAAAAAPoAAABkAABAAABAAAAAAAAAAAA"
    "AAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACAAACRXRyYWsAAABc"
    "dGtoZAAAAAMAAAAAAAAAAAAAAAEAAAAAAAABkAAAAAAAAAAAAAAAAQEAAAAAAQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAEAA"
    "AAAAAAAAAAAAAAAAACRlZHRzAAAAHGVsc3QAAAAAAAAAAQAAAZAAAAQAAAEAAAAAAb1tZGlhAAAAIG1kaGQAAAAAAAAAAAAAAAAAAD6A"
    "AAAdAFXEAAAAAAAtaGRscgAAAAAAAAAAc291bgAAAAAAAAAAAAAAAFNvdW5kSGFuZGxlcgAAAAFobWluZgAAABBzbWhkAAAAAAAAAAAA"
    "AAAkZGluZgAAABxkcmVmAAAAAAAAAAEAAAAMdXJsIAAAAAEAAAEsc3RibAAAAGpzdHNkAAAAAAAAAAEAAABabXA0YQAAAAAAAAABAAAA"
    "AAAAAAAAAgAQAAAAAD6AAAAAAAA2ZXNkcwAAAAADgICAJQABAASAgIAXQBUAAAAAAGl4AABpeAWAgIAFFAhW5QAGgICAAQIAAAAgc3R0"
    "cwAAAAAAAAACAAAABwAABAAAAAABAAABAAAAABxzdHNjAAAAAAAAAAEAAAABAAAACAAAAAEAAAA0c3RzegAAAAAAAAAAAAAACAAAAQsA"
    "AAEVAAAAvAAAAM4AAAC6AAAA2AAAAN0AAAAFAAAAFHN0Y28AAAAAAAAAAQAAA0cAAAAac2dwZAEAAAByb2xsAAAAAgAAAAH//wAAABxz"
    "YmdwAAAAAHJvbGwAAAABAAAACAAAAAEAAABidWR0YQAAAFptZXRhAAAAAAAAACFoZGxyAAAAAAAAAABtZGlyYXBwbAAAAAAAAAAAAAAA"
    "AC1pbHN0AAAAJal0b28AAAAdZGF0YQAAAAEAAAAATGF2ZjU5LjI3LjEwMAAAAAhmcmVlAAAGJm1kYXTeAgBMYXZjNTkuMzcuMTAwAAI8"
    "qlqqCJ0hB0Sp4vfzX11WpLqpNxInPXKIj3HAO6u4e6uydjcW8bcW9xd4+teuz1PNNU7rbcPN3GuLZp4y6xgWgfzUAHJ5OByXH//foKla"
    "q2Ls7LuJaDZrjPbblWU47E3LE46w2Ksz1xnqzPVmOsNysNysNajY59jn1spVKVSlUpVKVSlUpVKVSlUSUSUSUSUSUSUSUSUSUSUSUSUS"
    "USUSUSUSUSUSUSUSUSUSUSUSUSUSUSUSVLLLLL9z+TfJvzW9b1LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL"
    "LLLFFFFFFFFFFFFFFFwA9J7ayzLnXZUxC4E6bVNIU1XU51P/9X/3/WuNOLR5az1//p//P97I4uoev/9X/7v1gu9VJnr//l/6/voa1xVa"
    "p26KCMG3fsB/t00kcbdGB+IUt32FOZWE88888l57zee73vOReirC5ZsHj5zcXO7VYLsVavB4sOplYYJUMlJaklopTvc073MpTyeaedT3"
    "0+Xyn2D6fR75c2wA7bzvym5jooC9e4fJUhUUcZOjgU378/eo59+ez99CCAEYIK8LiRscZomNdZWZqyFYmmRnVOpvpISDBISDBISVBrAk"
    "J+n02VfTn+nm9UNm7nv53k/IHgoeee3Ohbo3c/ObSPtwOeGjQViYU3xYGBgYkDMgwMONqoV7x9+AAOr1LSQoEUjHoRJoRE/+tfXPf7Z/"
    "p7v9nvrVrly5IlrX2/r5uXORh327OwP7QAAooooGMUZU9BoM6jyF24j5ywu3RMmtwINNOpau4HeWLOo3v7k8lVbbbY1U0cLLPuQyfBhn"
    "99AyfDYz+8IyfGYZ/fQH/j4DvvoQ/8fAXnhD/w4GveEDxzCz39wfJ8Ae+0D4+GO6PcH+Pis/ooTi3vRTpXMTwMxVMGZYuFyIQYi6wC6U"
    "QAUu2lwskAqRUHAA2jUg1kYhsWD+GpP/7+f/9031Xi75m+tb9fVXmnPXPFVrczQd13PtdyIInCCIIkWmWrmlRysmqYAFGdSVgBUANxYj"
    "T0Yu52uZLjhjWzs4Ezt3TOzwTEi3KfjN2YWc2kwRWIrGN4UHOSgv85L4CrDIZCJFwO7kOfAcdBAYDuD6tiw3ASAVY4/WJ9odYcoFQM8h"
    "x0K6AsVzDQcQ8xf4QO/8YOfSOv/WR4h1hkAWHOBzyKwAICwBxACAgAv+QdQcQ5hcjnyCBWBfWHtD1h1TwADeNRjWQiGxQmZSGNRPtd7r"
    "/6f8f/+L56nHzpie03zrnrep41xUTmpdDzeTHyM6O0k1WMmjVR28eHHhxqAvbJcL/6eADQb9NXh5eD66iiijXR0moqoRUTwMxiWPdTiu"
    "nFRPEzmB4ZUgrxkvIuQZSqR9c78XtQuYXfCUWkHrkeAeAaDuCg1yHHgL4BAv4BsNSIke7gOfhBfIcfoPOz3UyqZpplwFEjmBdMA9obDU"
    "iYFhzkAQKwHANwMRwAEmVS2pXRiHQmN/JW/t+3/vl6zG5dXJJIuLrRxKrjrvAOOAOyMLYtimHQdiek/W/z/5/uuy5IwQGTBEDKIOhkJE"
    "7JgCAzEFRSBuEkUDha2fJsHtPRH6T6h9Q7o0ZhDgU4z2P2XsfF4utmMDsgkEaPiA//n/88PgAABhw8PPuAACnHh7biABhx4e24gAYfMP"
    "PuIAGHHh4e8AAw9oefeAQYeMPnewAYeMPnewAMKjbPuIAAB3TrsAABA8YeH14DGgFVg9tTsMN5NtAxkHlg5KcAizhIJgLkFxwAECn7IM"
    "lKLJaxNx4eut2H5f/2fr/OtaNdR16z//Nx/62BLzXV//2f9OABDt0YH4G3T0RiAmuK4ia99K9pfUlLV1PVdTLNLLNLLNLq2IA1ag+XH5"
    "GYKuI+XGLcGHiBQJBCLCRXe6ppg+Tlx8fpXlHCyYhfvywKD1vZ4f///cP4/zw+/9+AeH4fh9eH/6//9eB/+v/5/4+B/z/8/6eAdP6f0/"
    "p4AdP6f0/n6YAdP5+MJESREtSnolCC4uLnVPS1/mPmxxxxmxbFpmZmZmZmZmZmZmZmZmZmZmZmZmZmbgARiBtHA="
)
WEBM_TONE = (
    "GkXfo59ChoEBQveBAULygQRC84EIQoKEd2VibUKHgQRChYECGFOAZwEAAAAAAAXxEU2bdLpNu4tTq4QVSalmU6yBoU27i1OrhBZUrmtT"
    "rIHYTbuMU6uEElTDZ1OsggFCTbuMU6uEHFO7a1OsggXb7AEAAAAAAABZAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAVSalmsirXsYMPQkBNgI1MYXZmNTkuMjcu"
    "MTAwV0GNTGF2ZjU5LjI3LjEwMESJiEB5gAAAAAAAFlSua+WuAQAAAAAAAFzXgQFzxYijeYtuqqW9vJyBACK1nIN1bmSIgQCGhkFfT1BV"
    "U1aqgyEPi1a7hATEtACDgQLhkZ+BAbWIQM9AAAAAAABiZIEQY6KTT3B1c0hlYWQBATgBgD4AAAAAABJUw2f+c3OgY8CAZ8iaRaOHRU5D"
    "T0RFUkSHjUxhdmY1OS4yNy4xMDBzc9hjwItjxYijeYtuqqW9vGfIokWjh0VOQ09ERVJEh5VMYXZjNTkuMzcuMTAwIGxpYm9wdXNnyKJF"
    "o4hEVVJBVElPTkSHlDAwOjAwOjAwLjQwODAwMDAwMAAAH0O2dUQQ54EAo7iBAACASIJbXWxWt/QAAY/2l2JshmNlzSJ4ADJCU4OYG6Pb"
    "4n+pdfPHlJgCjGEFHKpp/LhW8afCEaOtgQAVgEikiFesmIUDXAWnrGreS+Ednhs+aUK+er8oO5D5RB+EKOrQcxjXWV/ao7aBACmASJwb"
    "UlOqSHyXGpnROHlnHbowUKY1x55iiM/l7keVaPOh58nCXez0b6JTVNALIN+YtnCjt4EAPYBInBtSVs4iKX+KUnC667PCp43saskVsaiU"
    "gbcCj1dWEto/kDnse99mnndvGV4Cg+3h8HCjtYEAUYBInBtRtBy/pnTcofjsy24W7WL7ESl8TcilhHBIXXvWm5JQ8ETOY7E9HQIYZJYi"
    "xfnoo7SBAGWASJwbUlbOIgGhE41P31fHRZH/swPTvGBk7JzLQGlPeiuI33Dypj60albGmU3LtkRAo7WBAHmASJwbUbQcv6i4ErT6qdBx"
    "r8PNqad7OQKY3LDz0WwfK6aK/q/gBAlWX7bB17NsMpAbgKO0gQCNgEicG1JWziN2e7wdJUW+YmHYLdpwFe6vqY4dLg57RZJS+PsjILYB"
    "JY7wxua29jOnMKOxgQChgEick5JWzh/qEXmmeChiPooJBi9710IqB6dmrs+hYd9KHMOY75ShuHUfRFFClKOxgQC1gEick5JWzh/WmcZw"
    "uzjcBW41IeCJ4ZWxBzwCU7bsvPovAVfnStThQcPoYFFL4KO2gQDJgEick5dm2lHxyq6eNtT7SrxJhA4bjOEB6rCNMV3XnAot/1OUl5rH"
    "LMH+By1d/EHwiTxuo7GBAN2ASJycF8E6UzRF/4fkLZa0R11gNK/48PvAHY8r9/i5Duw1med6pkFIGRdRD0ggo6+BAPGASJ1o+Xhci+Nd"
    "O2iMuuZLK5KtgrgBFnDur04/p5sYhQgBBh4gcH9LJhpYCqOvgQEFgEidaPl4XIhZUUkQlt0XD7q0Wgeu9HhHfTf4NnmzeGaHMtYeGzwr"
    "/uKA9aCjsYEBGYBInWj5eFyL41zN0AtQMpNHV7lqxQ/EO2P4YrSaLy91FaOB1pfwnCjjHWCeCayjrYEBLYBInWkHS36JOpVaC7DsSDWW"
    "DO4eZ1JkQ+KvjcTO4c/G/nhwc3pHiT7FWaOogQFBgEiesVl4XIguTs2pBHy+XVH4RiSRd4+nh/7mMqETJYj6OYTVgKOogQFVgEiesVl4"
    "XIwUek2qtXfYs9/1HVbYzX8QQavDVVBxrnoVweVccKOkgQFpgEiesVl4XII1r7Kj6NdxCPuDGLYqWxuRrpfkzgAL+D84o6OBAX2ASJ6x"
    "WXhch+zdjD4dvOnewkoDrN8RE4+A1sdTwP2ED6CjoZqBAZEASIM9Xw8P39zLk2RIlHV7un7T2YBHwHWihADN/mAcU7trkbuPs4EAt4r3"
    "gQHxggHF8IED"
)


def _opus_tone() -> bytes:
    """Ogg Opus written by libsndfile (soundfile), as an ``.opus`` file is."""
    import soundfile as sf
    buf = io.BytesIO()
    t = np.arange(6400) / 16000
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="OGG", subtype="OPUS")
    return buf.getvalue()


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("ext", ["m4a", "opus", "webm"])
def test_m4a_opus_webm_decode_to_the_tone(ext):
    from modalities.audio_decode import read_audio
    data = {"m4a": base64.b64decode(M4A_TONE), "webm": base64.b64decode(WEBM_TONE), "opus": _opus_tone()}[ext]
    wave, rate = read_audio(data, ext, 2.0, 16000)
    assert rate == 16000 and wave.dtype == np.float32
    assert 0.35 * rate <= len(wave) <= 0.55 * rate  # 0.4 s, plus the codec's priming samples
    assert abs(_peak_hz(wave, rate) - 440) < 20
    assert 0.05 < np.abs(wave).max() < 1.0


def _raw(key: str, prompt: str, **members) -> dict:
    record = {"prompt": prompt, "chosen": "Yes.", "rejected": "No."}
    return {"__key__": key, "__url__": "mem", "json": json.dumps(record).encode(), **members}


def test_audio_members_m4a_opus_webm_are_used_not_dropped():
    """Through the pipeline's decode stage with the audio adapter: each becomes one 2 s item; an audio-only
    .webm is read as a container, as an mp4's soundtrack is. Junk bytes name the format and why."""
    from anyalign.data.pipeline import Skipped, decode
    from modalities import AudioAdapter
    adapter = AudioAdapter(max_seconds=2.0)
    assert {"m4a", "opus"} <= set(adapter.extensions) and "webm" in adapter.container_extensions
    q = "<audio>\nWhat is heard?"
    out = list(decode(iter([
        _raw("m4a", q, m4a=base64.b64decode(M4A_TONE)),
        _raw("opus", q, opus=_opus_tone()),
        _raw("webm", q, webm=base64.b64decode(WEBM_TONE)),
        _raw("junk-m4a", q, m4a=b"not an m4a at all" * 20),
        _raw("junk-opus", q, opus=b"OggS" + bytes(200)),
    ]), {"audio": adapter}))
    good = {x["key"]: x["media"]["audio"] for x in out if not isinstance(x, Skipped)}
    reasons = {x.key: x.reason for x in out if isinstance(x, Skipped)}
    assert sorted(good) == ["m4a", "opus", "webm"]
    for items in good.values():
        assert len(items) == 1 and items[0].shape == (32000,)
        assert abs(_peak_hz(items[0].numpy()[:6000], 16000) - 440) < 20
    assert reasons["junk-m4a"].startswith("cannot decode the audio of m4a: not a container FFmpeg can read")
    assert reasons["junk-opus"].startswith("cannot decode audio (.opus): soundfile: ")
    assert "FFmpeg (decord): " in reasons["junk-opus"] and "BytesIO" not in reasons["junk-opus"]


# ---------------------------------------------------------------- members no adapter reads

def test_skip_reason_names_the_ignored_member(tiny_lm, tiny_vit):
    from anyalign.data.pipeline import Skipped, decode, tokenize
    from anyalign.data.template import PreferenceTokenizer
    from anyalign.model import MultimodalLM
    from modalities import ImageAdapter
    from conftest import jpeg_bytes
    adapters = {"image": ImageAdapter(encoder=tiny_vit)}
    model = MultimodalLM(tiny_lm, adapters)
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 512)
    out = list(tokenize(decode(iter([
        _raw("photo", "<image>\nWhat is this?", heic=b"\x00\x00\x00\x18ftypheic"),
        _raw("pair", "<image> or <image>?", **{"0.jpg": jpeg_bytes(0), "1.avif": b"\x00"}),
        _raw("none", "<image>\nWhat is this?"),
        _raw("notes", "<image>\nWhat is this?", jpg=jpeg_bytes(1), txt=b"a note", heic=b"\x00"),  # nothing short
        _raw("gif", "<image>\nWhat is this?", gif=_gif()),
    ]), adapters), tok, adapters))
    reasons = {x.key: x.reason for x in out if isinstance(x, Skipped)}
    good = {x["key"] for x in out if not isinstance(x, Skipped)}
    assert good == {"notes", "gif"}
    assert reasons["photo"] == ("prompt has 1 <image> placeholder but the sample has 0 image items; "
                                "ignored member(s): photo.heic (no adapter reads .heic)")
    assert reasons["pair"] == ("prompt has 2 <image> placeholders but the sample has 1 image item; "
                               "ignored member(s): pair.1.avif (no adapter reads .avif)")
    assert reasons["none"].startswith("prompt has 1 <image> placeholder but the sample has 0 image items; media "
                                      "members are KEY.<ext>")


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pattern()).save(buf, "GIF")
    return buf.getvalue()


# ---------------------------------------------------------------- video

def _demo_mp4() -> bytes:
    with tarfile.open(ASSETS / "data" / "video" / "val-000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        return tar.extractfile(member).read()


def _full(data: bytes) -> np.ndarray:
    import decord
    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_truncated_mp4_is_refused_not_sampled_from_what_is_left():
    """The demo clip (16 frames declared) cut right after its third frame's bytes: decord opens it and counts 3
    frames, and sampling 8 from them would repeat them. It is refused, saying what happened."""
    import decord
    from modalities.video import mp4_video_track, read_frames
    data = _demo_mp4()
    tree = _parse(data, 0, len(data))
    stbl = _find(tree, b"moov", b"trak", b"mdia", b"minf", b"stbl")[1]
    sizes = struct.unpack(">16I", _find(stbl, b"stsz")[1][12:12 + 64])
    assert struct.unpack(">I", _find(stbl, b"stsc")[1][4:8]) == (1,)  # one run of chunks ...
    (chunk,) = struct.unpack(">I", _find(stbl, b"stco")[1][8:12])    # ... of one chunk: samples back to back
    cut = data[: chunk + sum(sizes[:3])]
    assert len(decord.VideoReader(io.BytesIO(cut), num_threads=1)) == 3  # decord alone would go on
    assert mp4_video_track(cut) == {"frames": 16, "present": 3, "width": 64, "height": 64}
    with pytest.raises(BadSample, match=r"header declares 16 frames but only 3 are in its bytes") as err:
        read_frames(cut, 8, 32)
    assert "refused" in str(err.value)
    # most of it there (12 of 16): sampled evenly over what is there, each frame a real one
    most = data[: chunk + sum(sizes[:12])]
    assert mp4_video_track(most)["present"] == 12
    frames = read_frames(most, 4)
    full = _full(data)
    for f in frames:
        assert any(np.array_equal(f, g) for g in full[:12])
    assert mp4_video_track(data) == {"frames": 16, "present": 16, "width": 64, "height": 64}


def test_variable_frame_rate_clip_is_sampled_by_time():
    """The demo clip retimed: its first 12 frames in 0.75 s, the last 4 over 1.25 s (same frames, same 2 s).
    Uniform sampling by time takes one frame per half second; by frame number it took 3 of 4 from the first
    0.75 s."""
    from modalities.video import read_frames, sample_indices
    data = retime(_demo_mp4(), [2048, 2048] + [1024] * 12 + [5120] * 4)
    full = _full(data)
    assert len(full) == 16 and np.array_equal(full, _full(_demo_mp4()))  # only the times changed
    got = read_frames(data, 4)
    by_time = [4, 12, 13, 15]  # frames shown at 0.25, 0.75, 1.25, 1.75 s
    np.testing.assert_array_equal(got, full[by_time])
    assert sample_indices(16, 4, 8.0, None).tolist() == [2, 6, 10, 14]  # what sampling by index took
    # fps=2: at 0, 0.5, 1.0, 1.5 s
    np.testing.assert_array_equal(read_frames(data, 8, fps=2.0), full[[0, 8, 12, 14]])


def test_sample_by_time_equals_index_sampling_at_a_constant_rate():
    from modalities.video import sample_by_time, sample_indices
    for n, rate in ((16, 8.0), (90, 30.0), (7, 25.0), (300, 29.97), (1, 10.0)):
        starts = (np.arange(n) / rate).astype(np.float32)  # decord's timestamps are float32
        end = float(np.float32(n / rate))
        for num_frames in (1, 4, 5, 8, 16, 32):
            assert sample_by_time(starts, end, num_frames).tolist() == \
                sample_indices(n, num_frames, rate, None).tolist(), (n, rate, num_frames)
            for fps in (0.5, 1.0, 2.0, rate, 2 * rate):
                assert sample_by_time(starts, end, num_frames, fps).tolist() == \
                    sample_indices(n, num_frames, rate, fps).tolist(), (n, rate, num_frames, fps)


def test_sample_by_time_on_variable_timestamps():
    from modalities.video import sample_by_time
    # 10 frames in the first second, then one frame every 2 s up to 9 s
    starts = np.concatenate([np.arange(10) / 10, [1.0, 3.0, 5.0, 7.0]])
    assert sample_by_time(starts, 9.0, 3).tolist() == [10, 11, 13]  # at 1.5, 4.5, 7.5 s: frames from 1, 3, 7 s
    assert sample_by_time(starts, 9.0, 20, fps=1.0).tolist() == [0, 10, 11, 12, 13]  # each frame once
    # a clip that does not start at 0
    assert sample_by_time(starts + 5.0, 14.0, 3).tolist() == [10, 11, 13]


def test_keyframes_option_moves_samples_onto_keyframes_in_their_segment():
    from modalities.video import sample_by_time
    starts = np.arange(600) / 30.0  # 20 s at 30 fps, a keyframe every 250 frames (x264's default)
    keys = np.array([0, 250, 500])
    exact = sample_by_time(starts, 20.0, 4)
    assert exact.tolist() == [75, 225, 375, 525]
    # segments [0, 5), [5, 10), [10, 15), [15, 20) s: keyframes at 0, 8.3 and 16.7 s lie in segments 0, 1 and 3
    assert sample_by_time(starts, 20.0, 4, keyframes=keys).tolist() == [0, 250, 375, 500]


def test_keyframes_adapter_option_decodes_keyframes(tiny_vit):
    from modalities import VideoAdapter
    data = _demo_mp4()
    exact = VideoAdapter(encoder=tiny_vit, num_frames=8).decode(data, "mp4")
    fast = VideoAdapter(encoder=tiny_vit, num_frames=8, keyframes=True).decode(data, "mp4")
    full = _full(data)
    np.testing.assert_array_equal(exact, full[[1, 3, 5, 7, 9, 11, 13, 15]])
    np.testing.assert_array_equal(fast, full[[0, 3, 5, 7, 9, 11, 13, 15]])  # the demo's one keyframe is frame 0


def test_small_clips_are_not_scaled_up_while_decoding(tiny_vit):
    """A 64 px clip for a 224 px encoder: decoded at 64 px and only the kept frames resized (FFmpeg would
    scale every decoded frame up to 256 px); the item still has the encoder's size."""
    from modalities.video import read_frames
    data = _demo_mp4()
    assert read_frames(data, 4, 224).shape == (4, 256, 256, 3)  # read_frames' own contract is unchanged
    assert read_frames(data, 4, 224, upscale=False).shape == (4, 64, 64, 3)


def test_video_errors_are_in_words():
    from modalities.video import read_frames
    data = _demo_mp4()
    cases = {
        "no video stream": (data.replace(b"hdlr" + bytes(8) + b"vide", b"hdlr" + bytes(8) + b"soun"),
                            "cannot open video: no readable video stream (corrupt or unsupported container) ["),
        "junk": (b"\x00junk" * 500, "cannot open video: not a container FFmpeg can read (empty, corrupt, or not a video) ["),
        "empty": (b"", "cannot open video: not a container FFmpeg can read"),
    }
    for name, (clip, start) in cases.items():
        with pytest.raises(BadSample) as err:
            read_frames(clip, 4, 32)
        text = str(err.value)
        assert text.startswith(start), (name, text)
        assert "Check failed" not in text and ".cc:" not in text and "/project" not in text, text
        assert len(text) < 260


def test_decoder_text_drops_internals():
    from modalities.video import decoder_text, video_error
    e = RuntimeError("[17:33:07] /project/src/video/video_reader.cc:154: Check failed: st_nb >= 0 "
                     "(-1381258232 vs. 0) ERROR cannot find video stream with wanted index: -1")
    assert decoder_text(e) == "ERROR cannot find video stream with wanted index: -1"
    assert video_error(e) == ("no readable video stream (corrupt or unsupported container) "
                              "[RuntimeError: ERROR cannot find video stream with wanted index: -1]")
    e = RuntimeError("decoder.cc:292: [17:33:07] /project/src/video/ffmpeg/threaded_decoder.cc:218: Check failed: "
                     "avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: Error "
                     "sending packet.")
    assert video_error(e) == "frame data is damaged or cut off [RuntimeError: Thread worker: Error sending packet.]"


# ---------------------------------------------------------------- an mp4 retimed, without an encoder

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}


def _parse(data: bytes, a: int, b: int) -> list:
    out, pos = [], a
    while pos + 8 <= b:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        size = size or b - pos
        out.append([kind, _parse(data, pos + 8, pos + size) if kind in _CONTAINERS else data[pos + 8:pos + size]])
        pos += size
    return out


def _build(nodes: list) -> bytes:
    out = b""
    for kind, body in nodes:
        payload = _build(body) if isinstance(body, list) else body
        out += struct.pack(">I4s", 8 + len(payload), kind) + payload
    return out


def _find(nodes: list, *path: bytes) -> list:
    for node in nodes:
        if node[0] == path[0]:
            return node if len(path) == 1 else _find(node[1], *path[1:])
    raise KeyError(path)


def _table(body: bytes) -> list[tuple[int, int]]:
    (count,) = struct.unpack(">I", body[4:8])
    return [struct.unpack(">II", body[8 + 8 * i:16 + 8 * i]) for i in range(count)]


def retime(mp4: bytes, lengths: list[int]) -> bytes:
    """A constant-rate mp4 (moov before mdat) with its timeline bent: step k of its frame grid lasts
    ``lengths[k]`` ticks instead of one frame. Decode times (stts), B-frame offsets (ctts) and the edit list's
    start are all mapped through the same increasing function, so frame order is kept; box sizes and chunk
    offsets are rewritten. Keeping the sum over the shown frames keeps the clip's duration."""
    tree = _parse(mp4, 0, len(mp4))
    stbl = _find(tree, b"moov", b"trak", b"mdia", b"minf", b"stbl")[1]
    stts, ctts = _find(stbl, b"stts"), _find(stbl, b"ctts")
    deltas = [d for count, d in _table(stts[1]) for _ in range(count)]
    offsets = [o for count, o in _table(ctts[1]) for _ in range(count)]
    step = deltas[0]
    assert all(d == step for d in deltas), "a constant-rate clip to start from"
    grid = np.concatenate([[0], np.cumsum(lengths)])

    def bend(ticks: int) -> int:
        assert ticks % step == 0
        return int(grid[ticks // step])

    dts = [i * step for i in range(len(deltas))]
    stts[1] = stts[1][:4] + struct.pack(">I", len(dts)) + b"".join(
        struct.pack(">II", 1, bend(t + step) - bend(t)) for t in dts)
    ctts[1] = ctts[1][:4] + struct.pack(">I", len(dts)) + b"".join(
        struct.pack(">II", 1, bend(t + o) - bend(t)) for t, o in zip(dts, offsets))
    elst = _find(tree, b"moov", b"trak", b"edts", b"elst")
    body = bytearray(elst[1])
    body[12:16] = struct.pack(">I", bend(struct.unpack(">I", body[12:16])[0]))  # media time of the one entry
    elst[1] = bytes(body)
    grow = len(_build([_find(tree, b"moov")])) - len(_build([_find(_parse(mp4, 0, len(mp4)), b"moov")]))
    stco = _find(stbl, b"stco")
    (count,) = struct.unpack(">I", stco[1][4:8])
    chunks = struct.unpack(f">{count}I", stco[1][8:8 + 4 * count])
    stco[1] = stco[1][:8] + struct.pack(f">{count}I", *(c + grow for c in chunks))
    return _build(tree)


def test_a_member_only_another_adapter_reads_is_named(tmp_path, image_model):
    """An image-only run, a sample whose only media member is a wav: the reason says the audio adapter would read it
    and this run has none (the pipeline knows the run's adapters; the schema alone knows only the registry)."""
    from anyalign.data.module import PreferenceDataModule
    from conftest import pair, write_shard
    shard = write_shard(tmp_path / "s.tar", [pair("k", wav=b"RIFF....WAVEfmt ")])
    dm = PreferenceDataModule(shard, batch_size=1, num_workers=0, shuffle_buffer=1)
    dm.bind(image_model)
    (batch,) = list(dm._loader(dm.train_urls, 1, False, None))
    ((_, key, reason),) = batch["skipped"]
    assert key == "k"
    assert "ignored member(s): k.wav (read by the audio adapter, which this run does not have)" in reason, reason
