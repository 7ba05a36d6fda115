"""Kill-and-resume: a run stopped mid-epoch and resumed from its last checkpoint trains the same
batches with the same losses as an uninterrupted run; no sample of an epoch is repeated or skipped."""
import json

import lightning as L
import pytest

from anyalign.__main__ import main

from conftest import ROOT


class Recorder(L.Callback):
    """Appends (step, loss, keys) of every trained batch to a JSONL file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                "loss": float(outputs["loss"]), "keys": batch["keys"]}) + "\n")


class Crash(L.Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _fit(root, log, *extra, crash=None, ckpt=None):
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "every_n_train_steps": 7}},
                 {"class_path": "test_resume.Recorder", "init_args": {"path": str(log)}}]
    if crash:
        callbacks.append({"class_path": "test_resume.Crash", "init_args": {"at_step": crash}})
    args = ["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "22", "--data.batch_size", "16",
            "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.val_check_interval", "1000", "--trainer.default_root_dir", str(root),
            "--data.num_workers", "2", "--model.export_dir", "null", "--trainer.callbacks", json.dumps(callbacks),
            *extra]
    if ckpt:
        args += ["--ckpt_path", ckpt]
    main(args)


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_kill_and_resume_matches_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    _fit(tmp_path / "a", tmp_path / "a.jsonl")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "b", tmp_path / "b.jsonl", crash=10)  # dies after step 10; last checkpoint: step 7
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    _fit(tmp_path / "b", tmp_path / "b.jsonl", ckpt="last")  # as a user resumes: --ckpt_path last
    full = _read(tmp_path / "a.jsonl")
    resumed = [r for r in _read(tmp_path / "b.jsonl") if r["step"] <= 7] + \
              [r for r in _read(tmp_path / "b.jsonl")[10:]]  # steps 1-7, then the resumed run's steps 8-22
    assert [r["step"] for r in full] == list(range(1, 23)) == [r["step"] for r in resumed]
    assert full[-1]["epoch"] == 1  # 16 batches per epoch: the run crosses an epoch boundary
    for a, b in zip(full, resumed):
        assert a["keys"] == b["keys"], f"step {a['step']}: different samples"
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), f"step {a['step']}: loss differs"
    epoch0 = [k for r in full if r["epoch"] == 0 for k in r["keys"]]
    assert len(epoch0) == len(set(epoch0)) == 256  # each sample exactly once in the epoch
