"""``python -m anyalign fit --config configs/video_dpo.yaml``: LightningCLI with OmegaConf interpolation.

``python -m anyalign precompute --config X`` writes the reference cache of ``model.reference: precomputed``
(see ``anyalign/precompute.py``); every other subcommand is LightningCLI's (fit, validate, ...).
"""
from __future__ import annotations

import sys
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from modalities import load_entry_points

from .checkpoint import SafetensorsCheckpointIO
from .data import PreferenceDataModule
from .module import AlignModule


class AlignCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs):
        """Checkpoints in safetensors format unless the config names another CheckpointIO."""
        plugins = self.config_init[self.subcommand]["trainer"].get("plugins") if self.subcommand else None
        plugins = list(plugins or []) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins else [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, SafetensorsCheckpointIO()]
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


def main(args=None) -> None:
    load_entry_points()  # installed packages' adapters become known by class name
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["precompute"]:  # reference log-probs for model.reference: precomputed
        from .precompute import run
        run(argv[1:])  # sys.argv stays as it is: Lightning re-runs it to start the other DDP ranks
        return
    AlignCLI(
        AlignModule,
        PreferenceDataModule,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
