"""Build anyalign's embedded default assets: a tiny LM, tiny vision and audio encoders and demo DPO shards.

    python tools/make_demo_data.py --out assets [--only model|image|video|audio|multi_image|audio_visual ...]

Why: the configs, tests and quick-start need a model and data that exist offline, load in seconds on a CPU
and still exercise the real code paths (HF loading, chat templates, JPEG/H.264 decoding, WebDataset tars).

  tiny-lm/      byte-level BPE tokenizer (~512 tokens, ChatML template) + randomly initialised Qwen2 (2 layers)
  tiny-siglip/  randomly initialised SiglipVisionModel (32x32 input, 8x8 patches -> 16 tokens)
  tiny-audio/   randomly initialised WhisperEncoder (80 mels, 2 s window -> 100 positions) + its feature
                extractor config (preprocessor_config.json)
  data/image/   preference pairs over 8 scikit-image photographs (random crops, 64x64 JPEG)
  data/video/   the same classes as 16-frame 64x64 H.264 Ken Burns clips (ffmpeg/libx264)
  data/audio/   the classes' nouns spoken by espeak-ng (several voices, speeds, pitches), 16 kHz FLAC
  data/multi_image/  2-3 photographs per sample, asking about one of them by its position
  data/audio_visual/ Ken Burns clips with a speech soundtrack (AAC) saying another class; asks what is
                said or what is shown (a quarter of them as a silent mp4 + a separate FLAC)

Each pair's chosen and rejected answers share one template and differ only in the caption; every caption
is chosen and rejected equally often, so the preference can only be learned by looking at the media.
Everything is seeded; tar members get a fixed mtime and x264 runs single-threaded with bitexact muxing,
so reruns give byte-identical files with the same library, espeak-ng and ffmpeg versions. Building the
audio sets needs espeak-ng; nothing else (tests included) does.

The builders live in tools/demo_data/ (one module per concern); this script only picks the parts and lists
what was written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/demo_data importable however this is run
from demo_data.audio import build_audio, build_audio_visual  # noqa: E402
from demo_data.images import build_image, build_multi_image  # noqa: E402
from demo_data.models import build_lm, build_siglip, build_tiny_audio  # noqa: E402
from demo_data.readmes import write_readme, write_set_readme  # noqa: E402
from demo_data.video import build_video  # noqa: E402

PARTS = ["model", "image", "video", "audio", "multi_image", "audio_visual"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="assets", type=Path)
    ap.add_argument("--only", action="append", choices=PARTS,
                    help="build only this part (repeatable); default: everything")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    parts, out, t0 = args.only or PARTS, args.out, time.time()
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    if "model" in parts:
        build_lm(out)
        build_siglip(out)
        build_tiny_audio(out)
    for m, build in {"image": build_image, "video": build_video}.items():
        if m in parts:
            counts.update(build(out))
    if "image" in parts or "video" in parts:
        write_readme(out)
    builders = {"audio": build_audio, "multi_image": build_multi_image, "audio_visual": build_audio_visual}
    for m, build in builders.items():
        if m in parts:
            counts.update(build(out))
            write_set_readme(m, out)

    total = 0
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        size, rel = f.stat().st_size, f.relative_to(out)
        total += size
        extra = f"  {counts[str(rel)]} samples" if str(rel) in counts else ""
        print(f"{size / 1024:9.1f} KB  {out / rel}{extra}")
    print(f"total {total / 1024 / 1024:.2f} MB, {sum(counts.values())} samples written, "
          f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
