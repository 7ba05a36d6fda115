"""The command line: ``python -m anyalign {fit,validate,test,predict} --config X`` (LightningCLI with OmegaConf
interpolation), plus ``precompute`` (reference log-probs, ``anyalign/precompute.py``), ``inspect`` (look at
shards, ``anyalign/inspector.py``) and ``convert`` (other tools' datasets -> shards, ``anyalign/convert``).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from modalities import load_entry_points

from .checkpoint import SafetensorsCheckpointIO
from .commands import run_command
from .data.module import PreferenceDataModule
from .module import AlignModule

class AlignCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs):
        """Checkpoints in safetensors format unless the config names another CheckpointIO."""
        plugins = self.config_init[self.subcommand]["trainer"].get("plugins") if self.subcommand else None
        plugins = list(plugins or []) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins else [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, SafetensorsCheckpointIO()]
        # Loggers: CSV and TensorBoard in one <default_root_dir>/lightning_logs/version_N/ unless trainer.logger
        # is false or names its own CSV/TensorBoard logger; other loggers (W&B: --trainer.logger+=...) come after
        # the pair, so trainer.log_dir (config.yaml, export, curves.png) stays that version directory. CSV first:
        # it warns if its directory already holds files, as it would once TensorBoard's event file is there.
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        given = trainer_cfg.get("logger")
        given = [] if given is None or given is True else given if isinstance(given, (list, tuple, bool)) else [given]
        if given is not False and not any(isinstance(lg, (TensorBoardLogger, CSVLogger)) for lg in given):
            root = trainer_cfg.get("default_root_dir") or os.getcwd()
            csv = CSVLogger(root, name="lightning_logs")
            kwargs["logger"] = [csv, TensorBoardLogger(root, name="lightning_logs", version=csv.version), *given]
        trainer = super().instantiate_trainer(**kwargs)
        for cb in trainer.checkpoint_callbacks:
            # one folder per run directory, not per logger version, so `--ckpt_path last` finds the
            # previous run's last.ckpt when resuming
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        return trainer

    def _parse_ckpt_path(self) -> None:
        """LightningCLI would torch.load the checkpoint here to merge its hyper-parameters into the config.
        Checkpoints are safetensors files, and a resumed run takes its model from the config it is given
        (the same one it was started with), so there is nothing to merge."""


def build_cli(args: list[str], run: bool = False, **parser_kwargs) -> AlignCLI:
    """The run a config describes, built as ``fit`` builds it (same seed, model, data and trainer), without
    running a subcommand: for ``precompute``, ``inspect``, the benchmark and tests."""
    load_entry_points()
    with warnings.catch_warnings():  # args are given on purpose, not read from sys.argv
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return AlignCLI(AlignModule, PreferenceDataModule, run=run, seed_everything_default=0,
                        parser_kwargs={"parser_mode": "omegaconf", **parser_kwargs}, save_config_callback=None,
                        args=args)


def main(args=None) -> None:
    if run_command(sys.argv[1:] if args is None else list(args)):
        return
    load_entry_points()  # installed packages' adapters become known by class name
    AlignCLI(
        AlignModule,
        PreferenceDataModule,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )
