"""Photographs and the still-image sets: data/image (one random crop per sample) and data/multi_image
(2-3 crops per sample, asked about by position)."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .shards import record, text_record, write_shards
from .spec import CLASSES, MORE_ANSWERS, MORE_PROMPTS, MULTI_SIZE, ORDINALS, SIZE


def load_photo(name: str) -> Image.Image:
    """A ``skimage.data`` photograph as RGB (greyscale ones stacked to three channels)."""
    from skimage import data

    arr = getattr(data, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8), "RGB")


def jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    """Random brightness, contrast and saturation (+-15%), so no two crops share exact colours."""
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enh(img).enhance(rng.uniform(0.85, 1.15))
    return img


def random_crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """RandomResizedCrop: 40-100% of the area, aspect 3/4..4/3, random flip, resized to SIZE x SIZE."""
    w, h = img.size
    for _ in range(20):
        area = w * h * rng.uniform(0.4, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = min(w, h), min(w, h)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.resize((SIZE, SIZE), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return jitter(out, rng)


def jpeg(img: Image.Image, **options) -> bytes:
    """JPEG bytes, quality 90 unless ``options`` say otherwise."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **({"quality": 90} | options))
    return buf.getvalue()


def build_image(out: Path) -> dict[str, int]:
    """data/image: one random crop of the chosen class's photograph per pair."""
    photos = [load_photo(name) for name in CLASSES]

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        media = jpeg(random_crop(photos[c], rng))  # drawn before the record: the rng order fixes the bytes
        return {"json": record("image", c, r, rng), "jpg": media}

    return write_shards("image", "img", out, sample)


def build_multi_image(out: Path) -> dict[str, int]:
    """The asked-about picture shows the chosen class, the others random classes, none the rejected one.
    (Rejecting the class of another picture of the sample would need the order, which the tiny model does
    not learn from this little data; tests/test_multi_image.py checks the order instead.)"""
    photos, caps, k = [load_photo(name) for name in CLASSES], list(CLASSES.values()), len(CLASSES)

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        n = rng.choice([2, 3])
        asked = rng.randrange(n)
        classes = [rng.choice([x for x in range(k) if x not in (c, r)]) for _ in range(n)]
        classes[asked] = c
        nth = ORDINALS[asked]
        prompt = rng.choice(MORE_PROMPTS["multi_image"]).format(marks=" ".join(["<image>"] * n), nth=nth)
        fields = {"json": text_record(prompt, rng.choice(MORE_ANSWERS["multi_image"]), caps[c], caps[r], nth=nth)}
        for i, cls in enumerate(classes):
            img = random_crop(photos[cls], rng).resize((MULTI_SIZE, MULTI_SIZE), Image.BICUBIC)
            fields[f"{i}.jpg"] = jpeg(img, quality=85, optimize=True)
        return fields

    return write_shards("multi_image", "mim", out, sample)
