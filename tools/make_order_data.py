"""Build the frame-order task: preference pairs whose answer depends only on the order of a clip's frames.

    python tools/make_order_data.py --out /tmp/order [--train 256 --val 64 --shards 2 --seed 0]

Each clip is a bright square gliding across a dark, noisy background, 16 frames of 64x64 at 8 fps (2 s),
H.264 through the ``ffmpeg`` command (one process per split, single-threaded, bitexact: reruns give the same
bytes with the same ffmpeg). A trajectory is drawn once (start and end column, row, size, colours, speed profile) and its frames
are shown forward (left to right) or reversed (right to left), so the two directions have the same
distribution of frames: any one frame, or the bag of all of them, says nothing about the answer; only their
order does. The prompt asks which way the square moves; the chosen answer names the direction, the rejected
one the other direction. Both answers use one template, each direction is chosen exactly half the time in
every split (the held-out split included), so a model that ignores the video scores 0.5.

Writes ``OUT/train-000.tar .. train-{shards-1}.tar`` and ``OUT/val-000.tar`` (WebDataset: ``KEY.json`` +
``KEY.mp4``) and prints the ``--data.*`` flags that train on them, e.g.

    python -m anyalign fit --config configs/video_dpo.yaml --data.train_shards '/tmp/order/train-{000..001}.tar' \\
        --data.val_shards /tmp/order/val-000.tar --model.adapters.video.init_args.frame_deltas concat

Nothing is committed: the shards are rebuilt in seconds. ``tools/bench_video_time.py`` measures the ways of
marking time in the video adapter on them (``docs/methods.md``, "Time in video").
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

SIZE, FRAMES, FPS = 64, 16, 8
SIDE = (24, 32)  # the square's side in pixels: big enough that a tiny encoder's patches see where it is
MTIME = 1_700_000_000
DIRECTIONS = ("Left to right.", "Right to left.")
PROMPTS = ["<video>\nWhich way does the square move?",
           "<video>\nDoes the square move left to right or right to left?",
           "In which direction does the square travel in this clip?\n<video>",
           "<video>\nWhich way is the box moving?"]


def clip_frames(rng: random.Random, forward: bool) -> np.ndarray:
    """uint8 ``[FRAMES, SIZE, SIZE, 3]``: a square moving left to right, reversed in time when not ``forward``."""
    side = rng.randint(*SIDE)
    x0 = rng.uniform(0, SIZE * 0.125)
    x1 = rng.uniform(SIZE * 0.875 - side, SIZE - side)
    y = rng.uniform(0, SIZE - side)
    ease = rng.random() < 0.5  # linear or smoothstep speed
    fg = np.array([rng.randint(170, 255) for _ in range(3)], np.float32)
    bg = np.array([rng.randint(0, 60) for _ in range(3)], np.float32)
    noise = np.random.default_rng(rng.getrandbits(32))
    frames = []
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        t = t * t * (3 - 2 * t) if ease else t
        x = (1 - t) * x0 + t * x1
        f = bg + noise.normal(0, 8, (SIZE, SIZE, 3)).astype(np.float32)
        xa, ya = int(round(x)), int(round(y))
        f[ya:ya + side, xa:xa + side] = fg
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    frames = np.stack(frames)
    return frames if forward else frames[::-1].copy()


def h264_clips(clips: list[np.ndarray], tmp: Path) -> list[bytes]:
    """Each clip as its own mp4, all through one ffmpeg process (the segment muxer cuts the stream every
    ``FRAMES`` frames, each segment starting on a keyframe, timestamps from 0): one process per split."""
    for f in tmp.glob("clip-*.mp4"):
        f.unlink()
    cuts = ",".join(str(FRAMES * i) for i in range(1, len(clips)))
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{SIZE}x{SIZE}",
           "-r", str(FPS), "-i", "-", "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
           "-pix_fmt", "yuv420p", "-threads", "1", "-g", str(FRAMES), "-keyint_min", str(FRAMES),
           "-sc_threshold", "0", "-bf", "0", "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
           "-f", "segment", "-segment_format", "mp4", "-segment_format_options", "movflags=+faststart",
           "-reset_timestamps", "1", *(["-segment_frames", cuts] if cuts else []), str(tmp / "clip-%06d.mp4")]
    subprocess.run(cmd, input=b"".join(c.tobytes() for c in clips), check=True)
    out = [(tmp / f"clip-{i:06d}.mp4").read_bytes() for i in range(len(clips))]
    return out


def record(forward: bool, rng: random.Random) -> dict:
    chosen, rejected = DIRECTIONS if forward else DIRECTIONS[::-1]
    return {"prompt": rng.choice(PROMPTS), "chosen": chosen, "rejected": rejected,
            "answer": chosen, "choices": list(DIRECTIONS)}


def write_split(path: Path, name: str, n: int, seed: int, tmp: Path) -> None:
    rng = random.Random(seed)
    directions = [i % 2 == 0 for i in range(n)]  # exactly balanced (n even), then shuffled
    rng.shuffle(directions)
    records = [record(forward, rng) for forward in directions]
    clips = h264_clips([clip_frames(rng, forward) for forward in directions], tmp)
    with tarfile.open(path, "w") as tar:
        for j, (rec, clip) in enumerate(zip(records, clips)):
            key = f"order-{name}-{j:06d}"
            for ext, data in (("json", json.dumps(rec).encode()), ("mp4", clip)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), MTIME
                tar.addfile(info, io.BytesIO(data))


def build(out: Path | str, train: int = 256, val: int = 64, shards: int = 2, seed: int = 0) -> dict[str, str]:
    """Write the shards; return ``{"train_shards": pattern, "val_shards": path}``."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the order task's clips are encoded with the ffmpeg command (apt-get install -y ffmpeg)")
    if train % (2 * shards) or val % 2:
        raise ValueError("train must split into shards of an even size, and val must be even (balanced directions)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(shards):
            write_split(out / f"train-{i:03d}.tar", f"train{i}", train // shards, seed * 1000 + i, Path(tmp))
        write_split(out / "val-000.tar", "val", val, seed * 1000 + 500, Path(tmp))
    last = f"{shards - 1:03d}"
    train_shards = str(out / "train-000.tar") if shards == 1 else str(out / f"train-{{000..{last}}}.tar")
    return {"train_shards": train_shards, "val_shards": str(out / "val-000.tar")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=256, help="training pairs (half each direction)")
    ap.add_argument("--val", type=int, default=64, help="held-out pairs (half each direction)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = build(args.out, args.train, args.val, args.shards, args.seed)
    print(f"--data.train_shards '{paths['train_shards']}' --data.val_shards {paths['val_shards']}")


if __name__ == "__main__":
    main()
