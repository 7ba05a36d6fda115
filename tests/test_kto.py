"""Unpaired data for KTO: schema, on-the-fly unpairing, KL rows from mismatched pairs, start-up check."""
import json

import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.data.loading import check_sample_kind
from anyalign.data.pipeline import unpair
from anyalign.data.schema import parse_record
from modalities import BadSample

from conftest import jpeg_bytes, pair, write_shard


def test_unpaired_schema():
    rec = parse_record(json.dumps({"prompt": "<image> hi", "completion": "A cat.", "label": False}).encode())
    assert rec["responses"] == {"completion": "A cat."} and rec["desirable"] is False
    with pytest.raises(BadSample, match="label"):
        parse_record(json.dumps({"prompt": "hi", "completion": "A cat.", "label": "yes"}).encode())


def test_unpair_splits_each_pair_and_shares_media():
    media = {"image": [torch.zeros(3, 2, 2)]}
    ex = {"key": "k", "url": "u", "messages": [], "responses": {"chosen": "A.", "rejected": "B."}, "media": media}
    out = list(unpair(iter([ex])))
    assert [(o["key"], o["responses"]["completion"], o["desirable"]) for o in out] == [("k-c", "A.", True),
                                                                                       ("k-r", "B.", False)]
    assert out[0]["media"] is media and out[1]["media"] is media  # decoded once, shared


def test_kl_rows_use_the_next_samples_completion_in_the_same_row(image_model):
    adapters = dict(image_model.adapters.items())
    exs = [{"key": str(i), "prompt": [5, 6, 7 + i], "responses": {"completion": [20 + i, 30 + i]},
            "desirable": i % 2 == 0, "media": {}} for i in range(3)]
    batch = Collator("shared", 0, adapters)(exs)
    assert batch["input_ids"].shape[0] == 3  # prompt, own completion and KL completion share one row
    for i in range(3):
        row = batch["input_ids"][i]
        kl = row[batch["target_seq"][i] == batch["index"]["kl"][i]].tolist()
        own = row[batch["target_seq"][i] == batch["index"]["completion"][i]].tolist()
        assert own == [20 + i, 30 + i] and kl == [20 + (i + 1) % 3, 30 + (i + 1) % 3]
    assert batch["desirable"].tolist() == [True, False, True]


def test_kto_on_paired_data_fails_before_training(tmp_path):
    shard = write_shard(tmp_path / "p.tar", [pair("a", jpg=jpeg_bytes(0))])
    with pytest.raises(ValueError, match="need unpaired samples.*data.unpair"):
        check_sample_kind([shard], "data.train_shards", True)
    check_sample_kind([shard], "data.train_shards", True, unpair=True)  # fine with unpair
    with pytest.raises(ValueError, match="need paired samples"):
        unp = write_shard(tmp_path / "u.tar", [{"__key__": "a", "json": {"prompt": "x", "completion": "y",
                                                                           "label": True}}])
        check_sample_kind([unp], "data.train_shards", False)


def test_mixed_kinds_skip_the_kind_the_losses_do_not_use():
    from anyalign.data.pipeline import Skipped, check_kind
    paired = {"key": "p", "url": "u", "responses": {"chosen": "A", "rejected": "B"}}
    unpaired_ex = {"key": "q", "url": "u", "responses": {"completion": "A"}, "desirable": True}
    out = list(check_kind(iter([paired, unpaired_ex]), unpaired=True))
    assert out[1] is unpaired_ex and isinstance(out[0], Skipped) and "paired sample" in out[0].reason
    out = list(check_kind(iter([paired, unpaired_ex]), unpaired=False))
    assert out[0] is paired and isinstance(out[1], Skipped) and "unpaired sample" in out[1].reason


def test_skip_reasons_are_stable_text():
    from anyalign.data.pipeline import Skipped
    s = Skipped("u", "k", "[12:33:15] cannot open <_io.BytesIO object at 0x7f3a2c1b9e50>")
    assert s.reason == "cannot open <_io.BytesIO object>"


def test_kto_metrics_have_no_nan_when_a_batch_has_one_label(tiny_lm, tiny_vit):
    from anyalign.module import AlignModule
    from modalities import ImageAdapter
    module = AlignModule(lm=tiny_lm, adapters={"image": ImageAdapter(encoder=tiny_vit)}, losses=[{"name": "kto"}])
    exs = [{"key": str(i), "prompt": [5, 6, 7], "responses": {"completion": [20 + i, 30]}, "desirable": True,
            "media": {}} for i in range(3)]
    batch = Collator("shared", 0, dict(module.policy.adapters.items()))(exs)
    _, metrics, _ = module._step(batch, "train")
    assert "rewards/undesirable" not in metrics
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())


def test_unpaired_ties_are_never_right():
    """r = 0 (policy = reference) prefers nothing: not right for a desirable nor an undesirable sample."""
    from anyalign.logprobs import SeqLogps
    from anyalign.metrics import unpaired_metrics
    batch = {"index": {"completion": torch.tensor([0, 1, 2, 3])}, "desirable": torch.tensor([True, False, True, False])}
    policy = SeqLogps(torch.tensor([-1.0, -2.0, -3.0, -1.0]), torch.ones(4))
    reference = SeqLogps(torch.tensor([-1.0, -2.0, -4.0, -2.0]), torch.ones(4))  # r = 0, 0, +1, +1
    metrics, verdicts = unpaired_metrics(policy, reference, batch)
    assert verdicts.correct.tolist() == [0.0, 0.0, 1.0, 0.0] and verdicts.ties.tolist() == [True, True, False, False]
    assert float(metrics["rewards/accuracies"]) == 0.25
