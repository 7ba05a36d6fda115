"""Answers from an aligned model, in Python: train the video demo (or point at your own export), then ask.

    python -m anyalign fit --config configs/video_dpo.yaml
    python examples/generate.py runs/video_dpo/lightning_logs/version_0/export

Each sample is a prompt with its media (paths, read by the model's adapters as training reads them);
generation is batched, with a KV cache, and each prompt's media are encoded once.
"""
import sys
import tarfile
import tempfile
from pathlib import Path

from anyalign import generate, load_aligned

export = sys.argv[1] if len(sys.argv) > 1 else "runs/video_dpo/lightning_logs/version_0/export"
model = load_aligned(export)

# two clips from the held-out demo shard, written out as files, as a user's own media would be
tmp = Path(tempfile.mkdtemp())
with tarfile.open("assets/data/video/val-000.tar") as tar:
    clips = [m for m in tar if m.name.endswith(".mp4")][:2]
    for m in clips:
        (tmp / m.name).write_bytes(tar.extractfile(m).read())

samples = [{"key": m.name, "prompt": "<video>\nWhat does this video show?", "media": {"video": [str(tmp / m.name)]}}
           for m in clips]
for greedy in generate(model, samples, max_new_tokens=24):
    print(f"{greedy['key']}: {greedy['response']!r} ({greedy['tokens']} tokens)")
for sampled in generate(model, samples, max_new_tokens=24, temperature=0.8, top_p=0.9, seed=1):
    print(f"{sampled['key']} (sampled): {sampled['response']!r}")
