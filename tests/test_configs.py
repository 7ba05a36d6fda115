"""Every shipped config runs a few steps through the real CLI entry point, and writes an export."""
from pathlib import Path

import pytest

from anyalign.__main__ import main

from conftest import ROOT

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))


def run_fit(config: str, tmp_path: Path, *extra: str) -> None:
    main(["fit", "--config", str(ROOT / config), "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
          "--data.num_workers", "1", *extra])


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_runs(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run_fit(config, tmp_path)
    out = capsys.readouterr().out
    assert "held-out reward accuracy" in out and "bad samples skipped: 0" in out
    exports = list(tmp_path.glob("lightning_logs/version_*/export/anyalign.json"))
    assert exports, f"{config} wrote no export"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_configs_exist():
    assert {"configs/image_dpo.yaml", "configs/video_dpo.yaml"} <= set(CONFIGS)
