"""media_reliance is measured on held-out data in every run: with model.negatives the configured operators, without
them each adapter's reliance operator (a blank image, a frozen clip, silence)."""
from __future__ import annotations

import csv
import glob

import pytest
import torch

from anyalign.__main__ import main
from anyalign.data.negatives import reliance_spec
from modalities import AudioAdapter, ImageAdapter, VideoAdapter

from conftest import ROOT


def test_every_builtin_adapter_has_a_shape_keeping_reliance_operator(image_model):
    spec = reliance_spec(dict(image_model.adapters.items()))
    assert spec == {"image": [("null", 1.0, {})]}
    assert (ImageAdapter.reliance_operator, VideoAdapter.reliance_operator, AudioAdapter.reliance_operator) == \
        ("null", "static", "mute")
    x = torch.rand(3, 8, 8)
    assert torch.equal(ImageAdapter.operators["null"]([x], torch.Generator())[0], torch.full_like(x, -1.0))


def test_a_run_without_negatives_logs_media_reliance(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar",
          "false", "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--model.export_dir", "null"])
    (path,) = glob.glob(f"{tmp_path}/**/metrics.csv", recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("val/media_reliance")]
    assert rows, "no val/media_reliance logged"
    assert all(abs(float(r["val/media_reliance"])) > 0 for r in rows)  # a blank image changes the log-probs


def test_the_held_out_pass_before_training_is_in_metrics_csv(tmp_path, monkeypatch):
    """The sanity-check pass (the whole held-out set in the shipped configs) is the step-0 baseline in metrics.csv."""
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "1", "--trainer.enable_progress_bar",
          "false", "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--model.export_dir", "null"])
    (path,) = glob.glob(f"{tmp_path}/**/metrics.csv", recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("val/loss")]
    # Lightning logs a pass by the 0-based index of the batch it follows (the pass after step 2 at row step 1);
    # the baseline is written at global step 0, before any optimizer step
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert float(rows[0]["val/loss"]) == pytest.approx(0.6931, abs=1e-3)  # policy = reference: log 2
    assert float(rows[0]["val/rewards/accuracies"]) == 0.0 and rows[0]["val/media_reliance"]


def test_fewer_shards_than_readers_is_warned_at_fit_start(tmp_path, monkeypatch, caplog):
    from anyalign.data.loading import idle_readers
    assert idle_readers(4, 1, 2) is None and idle_readers(8, 2, 4) is None
    assert "1 reader(s) get no shard" in idle_readers(1, 1, 2)
    monkeypatch.chdir(ROOT)
    with caplog.at_level("WARNING", logger="anyalign"):
        main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "1", "--trainer.limit_val_batches",
              "0", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "2", "--model.export_dir", "null",
              "--data.train_shards", "assets/data/image/train-000.tar"])
    assert any("1 shard(s) for 1 rank(s) x 2 data worker(s)" in r.getMessage() for r in caplog.records)
