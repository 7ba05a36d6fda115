"""One directory per run: two fresh fits of a config get version_0 and version_1 (no last-v1.ckpt beside another
run's last.ckpt), ``--ckpt_path last`` resumes the newest and keeps writing into its directory (one metrics.csv,
no step twice), ``last`` for predict/evaluate is that run's checkpoint, and every rank takes rank 0's directory."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from anyalign.__main__ import main
from anyalign.checkpoint import (checkpoint_step, last_checkpoints, next_version, resolve_checkpoint, run_dir,
                                 run_version)

from conftest import ROOT


def fit(root: Path, *extra: str, steps: int = 2) -> None:
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", str(steps),
          "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root), "--data.num_workers", "0",
          "--data.batch_size", "4", "--model.export_dir", "null", *extra])


def steps_logged(metrics: Path) -> list[int]:
    with metrics.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_two_runs_two_directories_and_resume_continues_the_latest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    root = tmp_path / "runs"
    fit(root)
    fit(root)
    runs = sorted(p.name for p in (root / "lightning_logs").iterdir())
    assert runs == ["version_0", "version_1"]
    for v in (0, 1):
        d = run_dir(root, v)
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["last.ckpt"], "a run's own checkpoints only"
        assert {"metrics.csv", "config.yaml", "hparams.yaml", "curves.png"} <= {p.name for p in d.iterdir()}
        assert checkpoint_step(d / "checkpoints" / "last.ckpt") == 2
    assert not list(root.rglob("last-v*.ckpt"))
    link = root / "checkpoints"  # the latest run's checkpoints, at the path older versions wrote them to
    assert link.is_symlink() and link.resolve() == (run_dir(root, 1) / "checkpoints").resolve()
    assert resolve_checkpoint("last", root) == run_dir(root, 1) / "checkpoints" / "last.ckpt"
    v0 = (run_dir(root, 0) / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    capsys.readouterr()

    fit(root, "--ckpt_path", "last", steps=4)  # resumes the second run, in its own directory
    err = capsys.readouterr().err
    assert f"resuming from {run_dir(root, 1) / 'checkpoints' / 'last.ckpt'}" in err
    assert sorted(p.name for p in (root / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert sorted(p.name for p in (run_dir(root, 1) / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1
    assert checkpoint_step(run_dir(root, 1) / "checkpoints" / "last.ckpt") == 4
    assert (run_dir(root, 0) / "checkpoints" / "last.ckpt").stat().st_mtime_ns == v0, "the other run was touched"
    assert steps_logged(run_dir(root, 1) / "metrics.csv") == [0, 1, 2, 3], "one metrics.csv for the whole run"
    config = (run_dir(root, 1) / "config.yaml").read_text()
    assert "max_steps: 4" in config
    assert resolve_checkpoint("last", root) == run_dir(root, 1) / "checkpoints" / "last.ckpt"

    # --trainer.logger false: no run directory, Lightning's <root>/checkpoints/, never written through the link
    before = sorted(p.name for p in (run_dir(root, 1) / "checkpoints").iterdir())
    fit(root, "--trainer.logger", "false")
    assert not link.is_symlink() and (link / "last.ckpt").is_file()
    assert sorted(p.name for p in (run_dir(root, 1) / "checkpoints").iterdir()) == before
    assert resolve_checkpoint("last", root) == link / "last.ckpt"  # the newest, wherever it is


def test_resume_without_a_checkpoint_starts_a_new_run(tmp_path, monkeypatch, capsys):
    """As Lightning does (a requeued job's first start): a note, then a fresh run."""
    monkeypatch.chdir(ROOT)
    fit(tmp_path, "--ckpt_path", "last", "--trainer.limit_val_batches", "0", steps=1)
    assert "no checkpoint of this config" in capsys.readouterr().err
    assert (run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt").is_file()


def test_validate_last_without_a_checkpoint_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--config", "configs/image_dpo.yaml", "--trainer.default_root_dir", str(tmp_path),
              "--ckpt_path", "last"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --ckpt_path last: no last*.ckpt") and "has this config been trained" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_last_checkpoints_and_run_versions(tmp_path):
    def ckpt(path: Path, mtime: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
        return path
    assert next_version(tmp_path) == 0 and last_checkpoints(tmp_path) == []
    a = ckpt(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt", 1000)
    b = ckpt(run_dir(tmp_path, 2) / "checkpoints" / "last.ckpt", 3000)
    c = ckpt(tmp_path / "checkpoints" / "last-v1.ckpt", 2000)
    ckpt(run_dir(tmp_path, 1) / "checkpoints" / "epoch=0-step=5.ckpt", 4000)  # not a last checkpoint
    (tmp_path / "lightning_logs" / "version_x").mkdir()
    assert next_version(tmp_path) == 3
    assert last_checkpoints(tmp_path) == [a, c, b]
    assert [run_version(p, tmp_path) for p in (a, b, c)] == [0, 2, None]
    assert resolve_checkpoint("last", tmp_path) == b
    os.utime(a, (5000, 5000))  # run 0 resumed later: now the latest
    assert resolve_checkpoint("last", tmp_path) == a


def test_resumed_csv_continues_the_file_without_the_steps_logged_again(tmp_path):
    """The interrupted run logged steps 0-5, its checkpoint is at step 3: the resumed run's rows for 3, 4 come
    after rows 0-2, in the same file, with any new column added to the header."""
    from anyalign.cli import RunCSVLogger
    d = run_dir(tmp_path, 0)
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{s / 10}\n" for s in range(6)))
    logger = RunCSVLogger(tmp_path, name="lightning_logs", version=0, resume_step=3)
    for s in (3, 4):
        logger.log_metrics({"train/loss": 1.0 + s, "train/lr": 0.5}, step=s)
    logger.save()
    with (d / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert [float(r["train/loss"]) for r in rows] == [0.0, 0.1, 0.2, 4.0, 5.0]
    assert rows[0]["train/lr"] == "" and rows[-1]["train/lr"] == "0.5"


class _Strategy:
    def __init__(self, value):
        self.value = value

    def broadcast(self, obj):
        return self.value


class _Trainer:
    def __init__(self, rank0_version, checkpoint_callbacks=()):
        self.strategy = _Strategy(rank0_version)
        self.checkpoint_callbacks = list(checkpoint_callbacks)
        self.is_global_zero = False


def test_every_rank_takes_rank_zeros_run_directory(tmp_path):
    """A rank that picked another version (ranks started by a cluster, seeing another state of the folder)
    takes rank 0's, for its loggers and its checkpoint folder, through the one broadcast in setup."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from anyalign.callbacks import RunDirCallback
    loggers = [CSVLogger(tmp_path, name="lightning_logs", version=1),
               TensorBoardLogger(tmp_path, name="lightning_logs", version=1)]
    ckpt = ModelCheckpoint()
    ckpt.dirpath, ckpt._anyalign_run_dir = str(run_dir(tmp_path, 1) / "checkpoints"), True
    cb = RunDirCallback(str(tmp_path), 1, loggers)
    cb.setup(_Trainer(0, [ckpt]), None, "fit")
    assert cb.version == 0 and [lg.version for lg in loggers] == [0, 0]
    assert Path(loggers[0].log_dir) == run_dir(tmp_path, 0) and Path(loggers[1].log_dir) == run_dir(tmp_path, 0)
    assert Path(ckpt.dirpath) == (run_dir(tmp_path, 0) / "checkpoints").resolve()
    assert not (tmp_path / "checkpoints").exists()  # only rank 0 links


def test_validation_runs_after_the_last_step_once(tmp_path, monkeypatch):
    """A run shorter than val_check_interval validates after its last step; one whose last step is a scheduled
    validation step validates there once, not twice."""
    monkeypatch.chdir(ROOT)

    def val_steps(root):
        with (run_dir(root, 0) / "metrics.csv").open(newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("val/loss")]
    fit(tmp_path / "short", "--trainer.val_check_interval", "50", steps=2)
    assert val_steps(tmp_path / "short") == [1]  # CSV rows count steps from 0: after the 2nd step
    fit(tmp_path / "aligned", "--trainer.val_check_interval", "2", steps=2)
    assert val_steps(tmp_path / "aligned") == [1]
