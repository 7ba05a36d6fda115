"""A length-skewed multi-image preference set, for benchmarking packed rows (``data.packing``).

    python tools/make_skewed_data.py --out /tmp/skewed [--train 256 --val 32 --seed 0]

Each sample has 1-4 images (``KEY.0.jpg`` ... , one ``<image>`` each, as ``configs/multi_image_dpo.yaml`` reads
them) and a chosen and a rejected response of 5-300 tokens of the embedded tiny LM's tokenizer, drawn
independently and log-uniformly (most answers short, a few long: the mix that makes padded rows wasteful).
The images are seeded noise (the benchmark times steps; it does not train anything useful). Writes
``train-000.tar``, ``train-001.tar`` and ``val-000.tar`` under ``--out`` (a few MB; not for the repository).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a small large red blue green cat dog rocket coins galaxy cup tissue motorcycle astronaut picture "
         "shows left right first second third fourth image near far beside under over bright dark and with "
         "while some many one two three four it there is are in on of").split()
QUESTIONS = ["Describe these pictures.", "What do the images show?", "Compare the pictures in detail.",
             "Which image is the brightest, and why?"]


def _jpeg(rng: random.Random, size: int = 64) -> bytes:
    from PIL import Image
    data = bytes(rng.getrandbits(8) for _ in range(size * size * 3))
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), data).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _text(rng: random.Random, tokens: int, count) -> str:
    """Words until the text is ``tokens`` tokens long (within a word)."""
    words: list[str] = []
    while count(" ".join(words)) < tokens:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def _length(rng: random.Random, low: int = 5, high: int = 300) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _shard(path: Path, samples: list[tuple[str, dict, list[bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, record, images in samples:
            members = [(f"{key}.json", json.dumps(record).encode())]
            members += [(f"{key}.{i}.jpg", img) for i, img in enumerate(images)]
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))


def build(out: str | Path, train: int = 256, val: int = 32, seed: int = 0, lm: str | Path = ROOT / "assets/tiny-lm") -> dict:
    """Writes the shards; -> ``{"train": brace pattern, "val": path, "lengths": [(chosen, rejected, images)]}``."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(lm))

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = [_jpeg(rng) for _ in range(16)]
    samples, lengths = [], []
    for i in range(train + val):
        n = rng.randint(1, 4)
        c, r = _length(rng), _length(rng)
        record = {"prompt": " ".join(["<image>"] * n) + "\n" + rng.choice(QUESTIONS),
                  "chosen": _text(rng, c, count), "rejected": _text(rng, r, count)}
        split = "train" if i < train else "val"
        samples.append((f"skew-{split}-{i:06d}", record, [rng.choice(pool) for _ in range(n)]))
        lengths.append((c, r, n))
    half = train // 2
    _shard(out / "train-000.tar", samples[:half])
    _shard(out / "train-001.tar", samples[half:train])
    _shard(out / "val-000.tar", samples[train:])
    return {"train": str(out / "train-{000..001}.tar"), "val": str(out / "val-000.tar"), "lengths": lengths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    made = build(args.out, args.train, args.val, args.seed)
    resp = [x for c, r, _ in made["lengths"] for x in (c, r)]
    print(f"wrote {made['train']} and {made['val']}: responses {min(resp)}-{max(resp)} tokens "
          f"(median {sorted(resp)[len(resp) // 2]}), 1-4 images per prompt")


if __name__ == "__main__":
    main()
