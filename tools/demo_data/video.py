"""Ken Burns clips of the photographs, H.264-encoded reproducibly (single-threaded x264, bitexact muxing),
and the data/video set."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .images import load_photo
from .shards import record, write_shards
from .spec import CLASSES, FPS, FRAMES, RATE, SIZE


def ken_burns(img: Image.Image, rng: random.Random) -> list[Image.Image]:
    """FRAMES square crops interpolated (smoothstep) from a random start box to a random end box."""
    w, h = img.size

    def box():
        s = min(w, h) * rng.uniform(0.45, 0.9)
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        return np.array([x, y, x + s, y + s])

    a, b = box(), box()
    flip = rng.random() < 0.5
    factors = [rng.uniform(0.85, 1.15) for _ in range(3)]
    frames = []
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        t = t * t * (3 - 2 * t)
        f = img.resize((SIZE, SIZE), Image.BICUBIC, box=tuple((1 - t) * a + t * b))
        f = f.transpose(Image.FLIP_LEFT_RIGHT) if flip else f
        for enh, k in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
            f = enh(f).enhance(k)
        frames.append(f)
    return frames


def h264(frames: list[Image.Image], tmp: Path, speech: np.ndarray | None = None, crf: int = 28) -> bytes:
    """H.264 clip; with ``speech`` (mono float at RATE), muxed with it as an AAC track."""
    out = tmp / "clip.mp4"
    audio = ["-an"]
    if speech is not None:
        import soundfile as sf
        sf.write(tmp / "speech.wav", speech, RATE, subtype="PCM_16")
        audio = ["-i", str(tmp / "speech.wav"), "-c:a", "aac", "-b:a", "8k", "-ac", "1", "-ar", str(RATE),
                 "-flags:a", "+bitexact"]
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{SIZE}x{SIZE}", "-r", str(FPS), "-i", "-", *audio, "-c:v", "libx264", "-preset", "veryfast",
           "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1", "-map_metadata", "-1",
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart", str(out)]
    raw = b"".join(np.asarray(f, dtype=np.uint8).tobytes() for f in frames)
    subprocess.run(cmd, input=raw, check=True)
    return out.read_bytes()


def build_video(out: Path) -> dict[str, int]:
    """data/video: one Ken Burns clip of the chosen class's photograph per pair."""
    photos = [load_photo(name) for name in CLASSES]

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        media = h264(ken_burns(photos[c], rng), tmp)  # drawn before the record: the rng order fixes the bytes
        return {"json": record("video", c, r, rng), "mp4": media}

    return write_shards("video", "vid", out, sample)
