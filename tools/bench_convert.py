"""Conversion speed of ``anyalign.convert``: samples/s for an image and a video dataset.

    python tools/bench_convert.py [--n 2000]

image-jsonl    N records, each a distinct 64x64 JPEG file on disk (jsonl layout, paths)
image-parquet  the same images embedded as bytes in a TRL parquet file
image-resize   image-jsonl with --resize 32 (every image decoded, resized and re-encoded)
video-jsonl    N records cycling over the real H.264 mp4 clips in assets/data/video/*.tar
               (or, without them, clips made with ffmpeg)

Times only ``convert()`` (reading, checking, writing shards), not building the fixtures.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def images(n: int, size: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def videos(tmp: Path) -> list[bytes]:
    clips = []
    for shard in sorted((ROOT / "assets" / "data" / "video").glob("*.tar")):
        with tarfile.open(shard) as tar:
            clips += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".mp4")]
    if clips:
        return clips
    for i in range(8):  # no demo shards: make a few small clips
        path = tmp / f"gen{i}.mp4"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size=64x64:rate=8:duration=2",
                        "-vf", f"hue=h={i * 40}", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
        clips.append(path.read_bytes())
    return clips


def write_jsonl(root: Path, blobs: list[bytes], n: int, ext: str, marker: str) -> Path:
    (root / "media").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"media/{i:06d}.{ext}"
        (root / name).write_bytes(blobs[i % len(blobs)])
        rows.append({"id": f"s{i}", "prompt": f"{marker}\nWhat is this?", "chosen": "A thing.", "rejected": "Nothing.",
                     "images" if ext == "jpg" else "videos": [name]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anyalign.convert import convert
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        imgs = images(n)
        image_src = write_jsonl(tmp / "img", imgs, n, "jpg", "<image>")
        parquet = tmp / "trl.parquet"
        pq.write_table(pa.table({"prompt": ["<image>What is this?"] * n, "chosen": ["A thing."] * n,
                                 "rejected": ["Nothing."] * n, "images": [[{"bytes": b, "path": None}] for b in imgs]}),
                       parquet, row_group_size=500)
        clips = videos(tmp)
        video_src = write_jsonl(tmp / "vid", clips, n, "mp4", "<video>")
        runs = [("image-jsonl", "jsonl", image_src, {}), ("image-parquet", "trl", parquet, {}),
                ("image-resize", "jsonl", image_src, {"resize": 32}), ("video-jsonl", "jsonl", video_src, {})]
        for name, fmt, src, kw in runs:
            out = tmp / "out" / name
            t = time.perf_counter()
            s = convert(fmt, str(src), str(out / "train-%06d.tar"), maxcount=1000, log=None, **kw)
            dt = time.perf_counter() - t
            mb = sum(p.stat().st_size for p in out.glob("*.tar")) / 1e6
            assert s["written"] == n and s["skipped"] == 0, s
            print(f"{name:14s} {n} samples in {dt:6.2f} s = {n / dt:7.0f} samples/s  ({mb:.1f} MB of shards, "
                  f"{len(s['shards'])} shards)")


if __name__ == "__main__":
    main()
