"""Training curves: train/lr and train/grad_norm each optimizer step, TensorBoard + CSV in one version directory
by default, curves.png beside metrics.csv at the end of fit, and plot_curves on its own."""
from __future__ import annotations

import csv
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers import Logger
from PIL import Image

from anyalign.cli import main
from anyalign.curves import plot_curves

from conftest import ROOT

RECORDED: list[dict] = []


class Recorder(Logger):
    """A logger of no local files, standing in for W&B (not installed) in ``--trainer.logger+=``."""

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None):
        RECORDED.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def fit(tmp_path: Path, *extra: str, steps: int = 6) -> None:
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", str(steps),
          "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
          "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--model.export_dir", "null",
          "--trainer.enable_progress_bar", "false", *extra])


def rows(metrics_csv: Path) -> list[dict]:
    with metrics_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def test_fit_logs_tensorboard_csv_lr_grad_norm_and_curves(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    # image_dpo.yaml: lr 1e-3; 3 warm-up steps (not its 10) so that 6 steps see warm-up and cosine decay
    fit(tmp_path, "--model.warmup_steps", "3")
    out = capsys.readouterr().out

    (version,) = (tmp_path / "lightning_logs").iterdir()  # one version directory holds both loggers' files
    assert version.name == "version_0"
    assert len(list(version.glob("events.out.tfevents.*"))) == 1
    metrics = version / "metrics.csv"
    table = rows(metrics)
    assert {"train/lr", "train/grad_norm", "train/loss", "rewards/margins", "val/rewards/margins",
            "val/rewards/accuracies"} <= set(table[0])

    lr = {int(r["step"]): float(r["train/lr"]) for r in table if r["train/lr"]}
    grad = [float(r["train/grad_norm"]) for r in table if r["train/grad_norm"]]
    assert sorted(lr) == list(range(6)) and len(grad) == 6
    assert all(math.isfinite(g) and g > 0 for g in grad)

    def expected(step, base=1e-3, warm=3, total=6):  # module.configure_optimizers' warm-up then cosine to 0
        if step < warm:
            return base * (step + 1) / warm
        return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    for step in (0, 2, 3, 5):
        assert lr[step] == pytest.approx(expected(step), rel=1e-5), step
    assert lr[2] == pytest.approx(1e-3) and lr[5] == pytest.approx(2.5e-4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(version))
    events.Reload()
    assert {"train/lr", "train/grad_norm", "train/loss", "val/rewards/accuracies"} <= set(events.Tags()["scalars"])

    png = version / "curves.png"
    assert png.is_file() and Image.open(png).size == (1200, 800)
    assert f"[anyalign] training curves: {png}" in out


def test_logger_false_writes_no_logs_and_no_curves(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    fit(tmp_path, "--trainer.logger", "false", "--trainer.limit_val_batches", "0", steps=2)
    assert not (tmp_path / "lightning_logs").exists()
    assert "training curves" not in capsys.readouterr().out


def test_added_logger_joins_tensorboard_and_csv(tmp_path, monkeypatch, capsys):
    """``--trainer.logger+=CLASS`` (how W&B is added) keeps TensorBoard + CSV, and the run's directory."""
    monkeypatch.chdir(ROOT)
    RECORDED.clear()
    fit(tmp_path, "--trainer.logger+=test_curves.Recorder", "--trainer.limit_val_batches", "0", steps=2)
    version = tmp_path / "lightning_logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*")) and (version / "curves.png").is_file()
    assert any("train/grad_norm" in m for m in RECORDED)
    assert (version / "config.yaml").is_file()  # trainer.log_dir is still the version directory


def test_two_ddp_ranks_write_curves_and_export_once(tmp_path):
    """DDP on CPU (two gloo processes): rank 0 writes curves.png and the export; no rank waits on a collective
    call the other never makes (ExportCallback's trainer.log_dir is a broadcast, taken on every rank)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "anyalign", "fit", "--config", "configs/image_dpo.yaml", "--config",
           "configs/strategies/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
           "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
           "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--trainer.enable_progress_bar",
           "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: on a hang both ranks are killed
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"fit hung (ranks waiting on each other?)\n{proc.communicate()[1][-4000:]}")
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    version = tmp_path / "lightning_logs" / "version_0"
    assert (version / "curves.png").is_file() and (version / "export" / "anyalign.json").is_file()
    assert out.count("[anyalign] training curves:") == 1
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


def test_plot_curves_on_a_small_csv(tmp_path):
    metrics = tmp_path / "metrics.csv"
    lines = ["epoch,step,train/loss,rewards/margins,train/lr,train/grad_norm,val/loss,val/rewards/margins,"
             "val/rewards/accuracies"]
    for s in range(10):
        lines.append(f"0,{s},{0.69 - 0.03 * s},{0.05 * s},{1e-4 * (s + 1)},{1.0 + 0.1 * s},,,")
        if s % 5 == 4:
            lines.append(f"0,{s},,,,,{0.68 - 0.02 * s},{0.04 * s},{0.5 + 0.04 * s}")
    metrics.write_text("\n".join(lines) + "\n")
    out = plot_curves(metrics, tmp_path / "out" / "curves.png")
    assert out == tmp_path / "out" / "curves.png"
    assert Image.open(out).size == (1200, 800)


def test_plot_curves_names_the_file_lacking_columns(tmp_path):
    bad = tmp_path / "other.csv"
    bad.write_text("epoch,step,val/loss\n0,1,0.5\n")
    with pytest.raises(ValueError, match=r"other\.csv.*train/loss"):
        plot_curves(bad, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
