"""The trap-prior task (tools/make_trap_data.py): training pairs choose the majority class in 80 % of pairs, the
held-out set in exactly half, and every pair keeps its media's own class as the chosen answer."""
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_trap_data import build  # noqa: E402
from demo_data.spec import CLASSES, SPOKEN  # noqa: E402


def _pairs(path: str) -> list[tuple[dict, set[str]]]:
    out: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(json.loads(f.pop("json")), set(f)) for f in out.values()]


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_trap_task_counts_and_labels(tmp_path, modality):
    names = SPOKEN if modality == "audio" else CLASSES
    info = build(modality, tmp_path, majority="chelsea", share=0.8, seed=0)
    majority = names["chelsea"]
    train, val = _pairs(info["train_shards"]), _pairs(info["val_shards"])
    assert len(train) == info["train"] and len(val) == info["val"]
    share = sum(r["answer"] == majority for r, _ in train) / len(train)
    assert share == pytest.approx(0.8, abs=0.01)
    assert sum(r["answer"] == majority for r, _ in val) * 2 == len(val)
    for rec, exts in train + val:
        assert len(exts) == 1
        template = rec["chosen"].replace(rec["answer"], "{}", 1)
        rejected = [n for n in names.values() if template.format(n) == rec["rejected"]]
        assert len(rejected) == 1 and rejected[0] != rec["answer"]
        assert majority in (rec["answer"], rejected[0]), "every pair sets the majority class against another"
    # the media keep their class: a held-out pair's chosen answer is the class its demo record gave those bytes
    with tarfile.open(info["val_shards"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    with tarfile.open(Path(__file__).resolve().parents[1] / "assets" / "data" / modality / "val-000.tar") as tar:
        demo = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    label = {}
    for name, blob in demo.items():
        if not name.endswith(".json"):
            key = name.partition(".")[0]
            label[blob] = json.loads(demo[key + ".json"])["answer"]
    for name, blob in members.items():
        if not name.endswith(".json"):
            rec = json.loads(members[name.partition(".")[0] + ".json"])
            assert label[blob] == rec["answer"]
