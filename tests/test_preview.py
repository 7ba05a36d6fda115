"""Adapters' ``preview(data, ext)``: every built-in adapter draws an RGB picture of a demo shard's media item
(image thumbnail, video contact sheet, audio spectrogram); and importing the adapters stays light."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from modalities import AudioAdapter, ImageAdapter, ModalityAdapter, MultiImageAdapter, VideoAdapter
from modalities.preview import FRAME, SPECTROGRAM, THUMB, contact_sheet

from conftest import ASSETS, ROOT


def member(shard: str, ext: str) -> bytes:
    """The first member ending in ``.ext`` of the demo shard ``assets/data/<shard>``."""
    with tarfile.open(ASSETS / "data" / shard) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith("." + ext))
        return tar.extractfile(m).read()


def test_image_preview_is_a_thumbnail(tiny_vit):
    data = member("image/val-000.tar", "jpg")
    picture = ImageAdapter(encoder=tiny_vit).preview(data, "jpg")
    assert picture.mode == "RGB"
    w, h = Image.open(io.BytesIO(data)).size
    assert max(picture.size) == THUMB + 4 and picture.size == (round(w * THUMB / max(w, h)) + 4,
                                                               round(h * THUMB / max(w, h)) + 4)


def test_multi_image_preview_is_one_image(tiny_vit):
    picture = MultiImageAdapter(encoder=tiny_vit).preview(member("multi_image/val-000.tar", "0.jpg"), "jpg")
    assert picture.mode == "RGB" and max(picture.size) == THUMB + 4


@pytest.mark.parametrize("num_frames", [3, 10])
def test_video_preview_is_a_contact_sheet_of_the_sampled_frames(tiny_vit, num_frames):
    picture = VideoAdapter(encoder=tiny_vit, num_frames=num_frames).preview(member("video/val-000.tar", "mp4"), "mp4")
    assert picture.mode == "RGB"
    cols, rows = min(num_frames, 8), -(-num_frames // 8)
    assert picture.width % cols == 0 and picture.height % rows == 0
    cell_w, cell_h = picture.width // cols, picture.height // rows
    assert max(cell_w, cell_h) == FRAME + 4 and min(cell_w, cell_h) > 4


@pytest.mark.parametrize("shard, ext", [("audio/val-000.tar", "flac"), ("audio_visual/val-000.tar", "mp4")])
def test_audio_preview_is_a_spectrogram(shard, ext):
    picture = AudioAdapter(encoder=str(ASSETS / "tiny-audio")).preview(member(shard, ext), ext)
    assert picture.mode == "RGB" and picture.size == SPECTROGRAM
    colours = picture.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16  # a picture, not a flat fill


def test_adapters_without_a_picture_say_none():
    class Plain(ModalityAdapter):
        placeholder = "<plain>"

    assert Plain().preview(b"bytes", "bin") is None


def test_contact_sheet_lays_out_rows_of_eight():
    sheet = contact_sheet([Image.new("RGB", (20, 10), "red")] * 9, 40)
    assert sheet.mode == "RGB" and sheet.size == (8 * 44, 2 * 24)


HEAVY = {"transformers", "lightning", "librosa", "torchaudio", "decord", "soundfile"}


@pytest.mark.parametrize("statement", ["from modalities import BadSample", "import modalities.base",
                                       "from modalities.image import ImageAdapter",
                                       "from modalities import ADAPTERS, AudioAdapter, MultiImageAdapter, VideoAdapter",
                                       "import modalities.preview"])
def test_importing_adapters_is_light(statement):
    """Encoder libraries and decoders load when an adapter is built or decodes, not when it is imported."""
    code = f"import sys\n{statement}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
