"""Source datasets for tests/test_convert.py, written in each tool's documented layout: real media bytes
(Pillow JPEG/PNG, a PNG decompression bomb, an H.264 mp4 from the demo shards, a WAV written with ``wave``),
a media root with good and bad files, JSONL lines and TRL's Arrow/parquet rows.

Kept apart from the tests so those read as source -> convert -> what must come out."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import wave
import zlib
from pathlib import Path

import pytest
from PIL import Image

from anyalign.convert import reasons as F

from conftest import ROOT

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # only the parquet / save_to_disk sources need it
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(pa is None, reason="reading parquet/arrow needs pyarrow")


# ---- media ----

def jpeg(seed: int, size: int = 16) -> bytes:
    """A small JPEG whose bytes depend on ``seed``, so each sample's media can be told apart."""
    im = Image.frombytes("RGB", (size, size), bytes((seed * 7 + i) % 256 for i in range(size * size * 3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(seed: int, size: int = 12) -> bytes:
    """A flat-colour PNG (seeded), to check non-JPEG images keep their extension."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 256, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(w: int = 100000, h: int = 100000) -> bytes:
    """A valid PNG header claiming w x h pixels (a decompression bomb), no real pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def mp4() -> bytes:
    """A real H.264 clip: the first one of the demo video shards."""
    with tarfile.open(ROOT / "assets" / "data" / "video" / "val-000.tar") as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        return tar.extractfile(m).read()


def wav() -> bytes:
    """A 0.1 s mono 16-bit WAV."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 800)
    return buf.getvalue()


GARBAGE = b"<html>not an image</html>"


def write_media_root(tmp_path: Path) -> Path:
    """A media root ``data/`` with good and bad media, a file outside it and a symlink pointing out."""
    data = tmp_path / "data"
    for sub in ("img", "vid", "aud"):
        (data / sub).mkdir(parents=True)
    files = {"img/a0.jpg": jpeg(0), "img/a1.png": png(1), "img/a2.jpg": jpeg(2), "vid/v.mp4": mp4(),
             "aud/a.wav": wav(), "img/bomb.png": bomb_png(), "img/garbage.jpg": GARBAGE}
    for name, blob in files.items():
        (data / name).write_bytes(blob)
    (tmp_path / "outside.jpg").write_bytes(jpeg(9))
    (data / "img" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    return data


def bad_paths(tmp_path: Path) -> dict:
    """name -> (media path, the reason it is refused)."""
    return {"missing": ("img/nope.jpg", F.MISSING_MEDIA), "dotdot": ("../outside.jpg", F.ESCAPE),
            "absolute": (str(tmp_path / "outside.jpg"), F.ESCAPE), "symlink": ("img/link.jpg", F.ESCAPE),
            "bomb": ("img/bomb.png", F.TOO_LARGE), "garbage": ("img/garbage.jpg", F.UNREADABLE)}


# ---- JSONL sources (jsonl, LLaMA-Factory, ms-swift, align-anything) ----

def write_jsonl(path: Path, rows: list) -> None:
    """rows: dicts (dumped) or raw bytes lines (written as they are)."""
    with open(path, "wb") as f:
        for r in rows:
            f.write((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n")


# ---- TRL: parquet and save_to_disk ----

def image_type() -> pa.DataType:
    """How ``datasets`` stores an ``Image`` feature in Arrow/parquet."""
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def trl_schema() -> pa.Schema:
    """TRL's conversational vision preference layout: turns of typed parts, images as ``Image`` features."""
    part = pa.struct([("text", pa.string()), ("type", pa.string())])
    turns = pa.list_(pa.struct([("content", pa.list_(part)), ("role", pa.string())]))
    return pa.schema([("id", pa.string()), ("prompt", turns), ("chosen", turns), ("rejected", turns),
                      ("images", pa.list_(image_type()))])


def user(*parts: str | None, role: str = "user") -> dict:
    """A turn of TRL text parts; ``None`` is an image placeholder part."""
    return {"role": role, "content": [{"type": "image", "text": None} if p is None else {"type": "text", "text": p}
                                      for p in parts]}


def answer(t: str) -> list[dict]:
    """A one-turn assistant response in TRL's typed-parts form."""
    return [{"role": "assistant", "content": [{"type": "text", "text": t}]}]


def trl_rows() -> tuple[list[dict], list[str]]:
    """3 good rows then one bad row per reason, and those reasons in row order (rows 3, 4, ...)."""
    img = lambda b: {"bytes": b, "path": None}  # noqa: E731
    good = [dict(id="t0", prompt=[user(None, "What is this?")], chosen=answer("A cat."), rejected=answer("A dog."),
                 images=[img(jpeg(0))]),
            dict(id="t1", prompt=[user("Compare them.")], chosen=answer("Same."), rejected=answer("Different."),
                 images=[img(jpeg(1)), img(png(2))]),
            dict(id="t2", prompt=[user("Be brief.", role="system"), user(None, "Q?")], chosen=answer("Yes."),
                 rejected=answer("No."), images=[{"bytes": None, "path": "img/a2.jpg"}])]
    bad = [dict(id="two-markers", prompt=[user(None, None, "Q")], chosen=answer("a"), rejected=answer("b"),
                images=[img(jpeg(3))]),
           dict(id="bomb", prompt=[user(None, "Q")], chosen=answer("a"), rejected=answer("b"),
                images=[img(bomb_png())]),
           dict(id="garbage", prompt=[user(None, "Q")], chosen=answer("a"), rejected=answer("b"),
                images=[img(GARBAGE)]),
           dict(id="nochosen", prompt=[user(None, "Q")], chosen=None, rejected=answer("b"), images=[img(jpeg(4))]),
           dict(id="t0", prompt=[user(None, "Q")], chosen=answer("a"), rejected=answer("b"), images=[img(jpeg(5))]),
           dict(id="escape", prompt=[user(None, "Q")], chosen=answer("a"), rejected=answer("b"),
                images=[{"bytes": None, "path": "../outside.jpg"}]),
           dict(id="missing", prompt=[user(None, "Q")], chosen=answer("a"), rejected=answer("b"),
                images=[{"bytes": None, "path": "img/nope.jpg"}])]
    return good + bad, [F.MISMATCH, F.TOO_LARGE, F.UNREADABLE, F.MISSING_RESPONSE, F.DUPLICATE, F.ESCAPE,
                        F.MISSING_MEDIA]


def save_to_disk(table: pa.Table, directory: Path) -> None:
    """The layout of ``datasets.Dataset.save_to_disk``: Arrow IPC stream shards + state/info json."""
    directory.mkdir(parents=True)
    name = "data-00000-of-00001.arrow"
    with pa.OSFile(str(directory / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=2)
    (directory / "state.json").write_text(json.dumps({"_data_files": [{"filename": name}], "_fingerprint": "0",
                                                      "_format_type": None, "_split": "train"}))
    (directory / "dataset_info.json").write_text(json.dumps({"features": {}}))
