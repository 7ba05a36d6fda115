"""Pairs, records and tars shared by every data set: balanced (chosen, rejected) classes, the JSON record of
a pair, and the seeded WebDataset writer that makes reruns byte-identical."""
from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

from .spec import ANSWERS, CLASSES, MTIME, PROMPTS, SPLITS


def pairs(n: int, rng: random.Random) -> list[tuple[int, int]]:
    """(chosen, rejected) class indices; each block of 8 has every class once as chosen and once as
    rejected (rejected = chosen + k mod 8, k uniform in 1..7 per block), so counts are exactly balanced."""
    out, k = [], len(CLASSES)
    for _ in range(n // k):
        perm, shift = rng.sample(range(k), k), rng.randint(1, k - 1)
        out += [(c, (c + shift) % k) for c in perm]
    rng.shuffle(out)
    return out


def record(modality: str, chosen: int, rejected: int, rng: random.Random) -> bytes:
    """An image/video pair's JSON: one prompt and one answer template, differing only in the caption; the
    reference ``answer`` is the chosen class's caption, and ``choices`` the template filled with every class
    (for likelihood-choice accuracy)."""
    caps = list(CLASSES.values())
    answer = rng.choice(ANSWERS[modality])
    rec = {"prompt": rng.choice(PROMPTS[modality]),
           "chosen": answer.format(caps[chosen]), "rejected": answer.format(caps[rejected]),
           "answer": caps[chosen], "choices": [answer.format(c) for c in caps]}
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def text_record(prompt: str, answer: str, chosen: str, rejected: str, **fmt) -> bytes:
    """A pair's JSON from an already chosen prompt and answer template; ``answer``: the chosen phrase."""
    rec = {"prompt": prompt, "chosen": answer.format(chosen, **fmt), "rejected": answer.format(rejected, **fmt),
           "answer": chosen}
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


Sample = Callable[[int, int, random.Random, Path], dict]


def write_shards(modality: str, short: str, out: Path, sample: Sample) -> dict[str, int]:
    """train-000..N and val-000 tars of ``sample(chosen, rejected, rng, tmp) -> {field: bytes}`` per pair."""
    import webdataset as wds

    per_shard, n_train, seed = SPLITS[modality]
    folder = out / "data" / modality
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    shards = [("train", i, seed + i) for i in range(n_train)] + [("val", 0, seed + 500)]
    with tempfile.TemporaryDirectory() as tmp:
        for split, idx, shard_seed in shards:
            rng = random.Random(shard_seed)
            path = folder / f"{split}-{idx:03d}.tar"
            with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=MTIME) as sink:
                for j, (c, r) in enumerate(pairs(per_shard, rng)):
                    fields = sample(c, r, rng, Path(tmp))
                    sink.write({"__key__": f"{short}-{split}-{idx * per_shard + j:06d}", **fields})
            counts[str(path.relative_to(out))] = per_shard
    return counts
