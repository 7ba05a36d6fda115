"""The README.md files written next to the demo shards (data/ and each added set), filled in from spec."""
from __future__ import annotations

from pathlib import Path

from .spec import AV_CRF, CLASSES, MULTI_SIZE, SPLITS, SPOKEN, VOICES

README = """# Demo preference data

Built by `python tools/make_demo_data.py --out assets` (seeded; rebuilds byte-identically with the same
library/ffmpeg versions). Each shard is a plain WebDataset tar: `KEY.json` + `KEY.jpg` (image) or
`KEY.mp4` (video), keys like `img-train-000123`. `KEY.json`:

    {{"prompt": "<image>\\nWhat is in this picture?", "chosen": "It shows a cat.", "rejected": "It shows a rocket on a launch pad."}}

One `<image>`/`<video>` marker per prompt (4 prompt templates, marker before or after the question); chosen
and rejected use the same answer template and differ only in the caption. Every caption is chosen and
rejected equally often (exactly, per block of 8 samples), so the pairs can only be learned from the media.

| set | shards | samples | media |
|---|---|---|---|
| `image/train-{{000..003}}.tar` | 4 | 4 x 64 | random crop (40-100% area, aspect 3/4-4/3), flip, colour jitter, 64x64 JPEG q90 |
| `image/val-000.tar` | 1 | 64 | same, different seed |
| `video/train-{{000..003}}.tar` | 4 | 4 x 48 | 16 frames @ 8 fps, 64x64 H.264 (libx264 veryfast crf 28, yuv420p), Ken Burns pan/zoom |
| `video/val-000.tar` | 1 | 48 | same, different seed |

Classes (`skimage.data` image -> caption): {classes}.

Source photographs ship with scikit-image (`skimage.data`); see scikit-image's data documentation for
each image's licence.
"""


MORE_README = {
    "audio": """# Demo audio preference data

Built by `python tools/make_demo_data.py --out assets --only audio` (needs espeak-ng). `KEY.json` +
`KEY.flac` (16 kHz mono, 8-bit FLAC, at most 2 s): espeak-ng saying one of 8 phrases ({spoken}) in one of
{voices} voices, at 150-200 words per minute and a random pitch, after up to 0.25 s of silence, at a random
level. 4 x {n} training pairs + {n} held-out pairs (other seeds), e.g.

    {{"prompt": "<audio>\\nWhat is said in this recording?", "chosen": "The speaker says: a cat.", "rejected": "The speaker says: coins."}}

Chosen and rejected share one answer template; every phrase is chosen and rejected equally often.
""",
    "multi_image": """# Demo multi-image preference data

Built by `python tools/make_demo_data.py --out assets --only multi_image`. `KEY.json` + `KEY.0.jpg`,
`KEY.1.jpg` (+ `KEY.2.jpg`): 2 or 3 random crops ({size}x{size} JPEG) of the 8 photographs of
`data/image`, one `<image>` marker each, e.g.

    {{"prompt": "<image> <image> <image>\\nWhat is in the second picture?", "chosen": "The second picture shows a cat.", "rejected": "The second picture shows a rocket on a launch pad."}}

The chosen caption names the class of the picture asked about, the rejected one a class that no picture of
the sample shows (the other pictures show random other classes). 4 x {n} training pairs + {n} held-out
pairs.
""",
    "audio_visual": """# Demo audio-visual preference data

Built by `python tools/make_demo_data.py --out assets --only audio_visual` (needs espeak-ng and ffmpeg).
`KEY.json` + `KEY.mp4`: a 2 s, 64x64 H.264 Ken Burns clip of one photograph (crf {crf}) with an AAC
soundtrack (16 kHz mono, 8 kb/s) in which an espeak-ng voice names a different class. Half the prompts ask
what is said (chosen: the spoken phrase), half what is shown (chosen: the shown class); the rejected answer
names a class in neither stream, so the said half can only be learned from the soundtrack. A quarter of
the samples use the other layout: a silent `KEY.mp4` next to its soundtrack as `KEY.flac`. Every prompt
has both markers, e.g.

    {{"prompt": "<video>\\n<audio>\\nWhat is said in this video?", "chosen": "The speaker says: a rocket.", "rejected": "The speaker says: a cat."}}

4 x {n} training pairs + {n} held-out pairs.
""",
}



def write_readme(out: Path) -> None:
    """data/README.md: the image and video sets."""
    classes = ", ".join(f"`{k}` -> {v}" for k, v in CLASSES.items())
    (out / "data" / "README.md").write_text(README.format(classes=classes))


def write_set_readme(modality: str, out: Path) -> None:
    """data/<modality>/README.md for the audio, multi_image and audio_visual sets."""
    fmt = {"n": SPLITS[modality][0], "size": MULTI_SIZE, "voices": len(VOICES), "crf": AV_CRF,
           "spoken": ", ".join(f'"{w}"' for w in SPOKEN.values())}
    (out / "data" / modality / "README.md").write_text(MORE_README[modality].format(**fmt))
