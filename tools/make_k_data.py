"""K ranked responses per video prompt, and the same preferences as pairs, for benchmarking K-response rows.

    python tools/make_k_data.py --out /tmp/kdata [--k 4 --prompts 64]

From the demo video shards (``assets/data/video/train-*.tar``, ``tools/make_demo_data.py``): each clip's prompt gets
K responses, its chosen answer first, its rejected answer last and other candidate answers of the sample
(``choices``) between, scored K, K-1, ..., 1. Writes

- ``ranked-000.tar``: one sample per prompt, ``{"prompt", "responses": [...], "scores": [...]}`` and the clip;
- ``pairs-000.tar``: the pairwise expansion, one pair sample per ordered pair (K(K-1)/2 per prompt), each with its
  own copy of the clip (what pair data looks like).

Both hold the same prompts, clips and preferences; a K-response row trains the first, pair rows the second.
Written under ``--out`` (tens of MB at most; not for the repository).
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _samples(shards: list[Path]):
    for shard in shards:
        with tarfile.open(shard) as tar:
            members: dict[str, dict] = {}
            for m in tar:
                if m.isfile():
                    key, _, field = m.name.partition(".")
                    members.setdefault(key, {})[field] = tar.extractfile(m).read()
        yield from members.items()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build(out: Path, k: int = 4, prompts: int = 64) -> dict:
    """-> {"ranked": path, "pairs": path, "prompts": n, "pairs_per_prompt": k(k-1)/2}."""
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted((ROOT / "assets/data/video").glob("train-*.tar"))
    ranked, pairs = out / "ranked-000.tar", out / "pairs-000.tar"
    n = 0
    with tarfile.open(ranked, "w") as rt, tarfile.open(pairs, "w") as pt:
        for key, fields in _samples(shards):
            if n == prompts:
                break
            rec = json.loads(fields["json"])
            clip = next(f for f in fields if f != "json")
            middle = [c for c in rec.get("choices", []) if c not in (rec["chosen"], rec["rejected"])][: k - 2]
            if len(middle) < k - 2:
                continue
            responses = [rec["chosen"], *middle, rec["rejected"]]
            scores = [float(k - i) for i in range(k)]
            _add(rt, f"{key}.json", json.dumps({"prompt": rec["prompt"], "responses": responses,
                                                "scores": scores}).encode())
            _add(rt, f"{key}.{clip}", fields[clip])
            for i, j in itertools.combinations(range(k), 2):  # i scored above j
                pk = f"{key}-p{i}{j}"
                _add(pt, f"{pk}.json", json.dumps({"prompt": rec["prompt"], "chosen": responses[i],
                                                   "rejected": responses[j]}).encode())
                _add(pt, f"{pk}.{clip}", fields[clip])
            n += 1
    return {"ranked": str(ranked), "pairs": str(pairs), "prompts": n, "pairs_per_prompt": k * (k - 1) // 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(build(Path(args.out), args.k, args.prompts)))


if __name__ == "__main__":
    main()
