"""Video decode cost per sample against clip length: what one data worker spends turning a clip's bytes into
the frames the video adapter keeps.

    python tools/bench_decode.py [--lengths 2 10 30 60] [--sizes 64 320] [--num-frames 8] [--size 224]
                                 [--repeats 7] [--before DIR]

Clips: ``testsrc2`` at 30 fps, H.264 (libx264 defaults, so a keyframe every 250 frames, 8.3 s, as most encoders
write), yuv420p, moov first; made once with the ``ffmpeg`` command (a Debian package, only needed here) into a
temporary directory, or taken from ``--clips DIR`` (``{length}s_{px}px.mp4``).

Each cell is, per clip, the best of ``--repeats`` runs of what the video adapter's ``decode`` does (bytes to the
kept uint8 frames: open, index, sample, decode, scale), single-threaded as in a data worker; the columns are
run in turn within each repeat, so a busy machine slows them alike:

before     ``--before DIR``: the same call on another checkout's ``modalities`` (``git worktree add DIR COMMIT``),
           loaded beside this one
exact      the video adapter's default: ``num_frames`` frames at the centres of equal segments in time
keyframes  ``VideoAdapter(keyframes=True)``: a sample moves to a keyframe inside its segment when there is one
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path, seconds: int, px: int) -> None:
    if shutil.which("ffmpeg") is None:
        sys.exit("making the clips needs the ffmpeg command (apt-get install -y ffmpeg), or pass --clips DIR")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={px}x{px}:rate=30:duration={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True)


def load_package(directory: Path, name: str):
    """``directory/modalities`` imported as package ``name`` (its modules import each other relatively)."""
    init = directory / "modalities" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.video")


def adapter_call(read_frames, **extra):
    """What ``VideoAdapter.decode`` passes, for a ``read_frames`` of any version."""
    params = inspect.signature(read_frames).parameters
    kw = {k: v for k, v in {"upscale": False, **extra}.items() if k in params}
    if set(extra) - set(kw):
        return None
    return lambda data, n, size: read_frames(data, n, size, None, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2, 10, 30, 60], help="clip lengths in seconds")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 320], help="clip sides in pixels (square)")
    ap.add_argument("--num-frames", type=int, default=8, help="frames kept per clip")
    ap.add_argument("--size", type=int, default=224, help="the encoder's input size (SigLIP/CLIP base: 224)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--clips", help="a directory of clips named {length}s_{px}px.mp4 (else made with ffmpeg)")
    ap.add_argument("--before", help="another checkout whose modalities/ give the 'before' column")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)  # as in a data worker (anyalign.data.pipeline.worker_init)
    from modalities.video import read_frames

    modes = {}
    if a.before:
        modes["before"] = adapter_call(load_package(Path(a.before).resolve(), "modalities_before").read_frames)
    modes["exact"] = adapter_call(read_frames)
    modes["keyframes"] = adapter_call(read_frames, keyframes=True)
    modes = {k: v for k, v in modes.items() if v is not None}
    tmp = Path(a.clips) if a.clips else Path(tempfile.mkdtemp(prefix="bench_decode_"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, 1 thread; {a.num_frames} frames kept per clip, decoded for "
          f"a {a.size} px encoder; ms per clip, best of {a.repeats}" + (f"; before = {a.before}" if a.before else ""))
    print("| clip | length | " + " | ".join(f"{m} ms" for m in modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for px in a.sizes:
        for seconds in a.lengths:
            path = tmp / f"{seconds}s_{px}px.mp4"
            if not path.exists():
                make_clip(path, seconds, px)
            data = path.read_bytes()
            best = {m: float("inf") for m in modes}
            for m, fn in modes.items():
                fn(data, a.num_frames, a.size)  # warm-up
            for _ in range(a.repeats):
                for m, fn in modes.items():
                    t = time.perf_counter()
                    fn(data, a.num_frames, a.size)
                    best[m] = min(best[m], time.perf_counter() - t)
            print(f"| {px}x{px} | {seconds} s | " + " | ".join(f"{best[m] * 1000:.1f}" for m in modes) + " |", flush=True)
    if not a.clips:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
