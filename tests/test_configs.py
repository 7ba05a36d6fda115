"""Every shipped config runs a few steps through the real CLI entry point, and writes an export; every one
takes its trainer settings from the shared configs/base/trainer.yaml."""
from pathlib import Path

import pytest
import yaml

from anyalign.__main__ import main

from conftest import ROOT

# configs that assemble their model from adapters; the pretrained-family ones name a hub checkpoint and run in
# tests/test_family_configs.py on tiny local checkpoints of their family
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml")
                 if "adapters" in (yaml.safe_load(p.read_text()).get("model") or {}))


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


SHARED = yaml.safe_load((ROOT / "configs" / "base" / "trainer.yaml").read_text())["trainer"]


def resolved(config: str, capsys, *extra: str) -> dict:
    """The config as ``python -m anyalign fit --config CONFIG [extra] --print_config`` resolves it."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / config), *extra, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_shared_trainer_block_is_what_the_configs_had():
    """The values every config repeated before they were shared, with default_root_dir left to each config."""
    assert SHARED == {"accelerator": "auto", "devices": 1, "max_steps": 150, "max_epochs": -1, "val_check_interval": 50,
                      "check_val_every_n_epoch": None, "num_sanity_val_steps": -1, "log_every_n_steps": 10,
                      "gradient_clip_val": 1.0,
                      "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                     "init_args": {"save_last": True, "every_n_train_steps": 50}}]}


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_takes_the_shared_trainer_block(config, capsys, tmp_path, monkeypatch):
    """``config: base/trainer.yaml`` in each config: the shared values, its own default_root_dir, and the
    command line still wins. Run from another directory: the include resolves against the config file."""
    monkeypatch.chdir(tmp_path)
    trainer = resolved(config, capsys)["trainer"]
    for key, value in SHARED.items():
        if key != "callbacks":
            assert trainer[key] == value, (config, key)
    (checkpoint,) = trainer["callbacks"]
    assert checkpoint["class_path"] == SHARED["callbacks"][0]["class_path"]
    assert SHARED["callbacks"][0]["init_args"].items() <= checkpoint["init_args"].items()
    assert trainer["default_root_dir"] == f"runs/{Path(config).stem}"

    trainer = resolved(config, capsys, "--trainer.max_steps", "3", "--trainer.default_root_dir", "elsewhere")["trainer"]
    assert (trainer["max_steps"], trainer["default_root_dir"]) == (3, "elsewhere")
    assert trainer["val_check_interval"] == SHARED["val_check_interval"]


def test_configs_exist():
    assert {"configs/image_dpo.yaml", "configs/video_dpo.yaml"} <= set(CONFIGS)
    assert not any(c.startswith("configs/base/") for c in CONFIGS), "configs/base/ holds fragments, not configs"
