"""Build a trap-prior task per modality from the demo shards: training pairs whose chosen answers mostly name one
class (a misleading language prior), and a balanced held-out set on which that prior scores 0.5.

    python tools/make_trap_data.py --modality image --out /tmp/trap/image [--majority chelsea --share 0.8 --seed 0]

Reads ``assets/data/{modality}/train-*.tar`` and ``val-000.tar`` (image, video or audio; nothing is downloaded)
and re-pairs their media, each with its own true class as the chosen answer (same prompt and answer template):
- train: every sample of the majority class A once per other class as the rejected answer, and, from the other
  classes (evenly), as many samples with A as the rejected answer as make A the chosen answer in ``share`` of
  the pairs (0.8: A is chosen 4 times as often as it is rejected). A text-only model is right on ``share`` of
  the training pairs by preferring A.
- held-out: every sample of another class with A rejected, and as many pairs of A samples (each against the
  other classes in turn) with A chosen: half the pairs have A chosen, half A rejected, so preferring A scores
  0.5 and only the media can do better.

Writes ``OUT/train-000.tar`` and ``OUT/val-000.tar`` and prints the ``--data.*`` flags. Nothing is committed.
``tools/bench_trap.py`` trains DPO and mDPO on them and reports held-out reward accuracy.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from demo_data.spec import CLASSES, SPOKEN  # noqa: E402

MODALITIES = ("image", "video", "audio")
MTIME = 1_700_000_000


def read_samples(paths: list[Path], names: dict[str, str]) -> dict[str, list[dict]]:
    """Class -> samples ``{"json": record, "media": (ext, bytes)}`` of demo shards, in shard order."""
    by_phrase = {v: k for k, v in names.items()}
    out: dict[str, list[dict]] = defaultdict(list)
    for path in paths:
        samples: dict[str, dict] = {}
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, fields in samples.items():
            rec = json.loads(fields.pop("json"))
            (ext, data), = fields.items()
            out[by_phrase[rec["answer"]]].append({"json": rec, "media": (ext, data)})
    return out


def pair(sample: dict, chosen: str, rejected: str, names: dict[str, str]) -> dict:
    rec = sample["json"]
    answer = rec["chosen"].replace(rec["answer"], "{}", 1)  # the answer template of the original pair
    assert names[chosen] == rec["answer"]
    return {"prompt": rec["prompt"], "chosen": answer.format(names[chosen]),
            "rejected": answer.format(names[rejected]), "answer": names[chosen], "media": sample["media"]}


def build_split(samples: dict[str, list[dict]], majority: str, share: float | None, rng: random.Random,
                names: dict[str, str]) -> list[dict]:
    others = [c for c in names if c != majority]
    majority_pairs = [pair(s, majority, c, names) for s in samples[majority] for c in others]
    if share is None:  # held-out: as many with the majority rejected as chosen
        minority = [pair(s, c, majority, names) for c in others for s in samples[c]]
        majority_pairs = (majority_pairs * (len(minority) // max(len(majority_pairs), 1) + 1))[: len(minority)]
        pairs = majority_pairs + minority
    else:
        want = round(len(majority_pairs) * (1 - share) / share)
        pools = {c: list(samples[c]) for c in others}
        for pool in pools.values():
            rng.shuffle(pool)
        minority, i = [], 0
        while len(minority) < want:  # evenly over the other classes
            c = others[i % len(others)]
            if pools[c]:
                minority.append(pair(pools[c].pop(), c, majority, names))
            i += 1
            if i > want * len(others) * 4:
                raise ValueError(f"not enough samples of the other classes for share={share}")
        pairs = majority_pairs + minority
    rng.shuffle(pairs)
    return pairs


def write_tar(path: Path, pairs: list[dict], prefix: str) -> None:
    with tarfile.open(path, "w") as tar:
        for i, p in enumerate(pairs):
            key = f"{prefix}-{i:06d}"
            ext, data = p.pop("media")
            for name, blob in ((f"{key}.json", json.dumps(p).encode()), (f"{key}.{ext}", data)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(blob), MTIME
                tar.addfile(info, io.BytesIO(blob))


def build(modality: str, out: Path, majority: str = "chelsea", share: float = 0.8, seed: int = 0) -> dict:
    """Write the task's shards; return the ``--data.*`` values and counts."""
    names = SPOKEN if modality == "audio" else CLASSES
    src = ROOT / "assets" / "data" / modality
    rng = random.Random(seed)
    train = build_split(read_samples(sorted(src.glob("train-*.tar")), names), majority, share, rng, names)
    val = build_split(read_samples([src / "val-000.tar"], names), majority, None, rng, names)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": len(train), "train_majority_chosen": sum(p["answer"] == names[majority] for p in train),
              "val": len(val), "val_majority_chosen": sum(p["answer"] == names[majority] for p in val)}
    write_tar(out / "train-000.tar", train, f"trap-{modality}-train")
    write_tar(out / "val-000.tar", val, f"trap-{modality}-val")
    return {"train_shards": str(out / "train-000.tar"), "val_shards": str(out / "val-000.tar"), **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modality", choices=MODALITIES, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--majority", default="chelsea", choices=list(CLASSES))
    ap.add_argument("--share", type=float, default=0.8, help="share of training pairs whose chosen answer is the majority class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    info = build(args.modality, args.out, args.majority, args.share, args.seed)
    print(json.dumps(info))
    print(f"--data.train_shards {info['train_shards']} --data.val_shards {info['val_shards']}")


if __name__ == "__main__":
    main()
