"""``python -m anyalign fit --config configs/video_dpo.yaml``: LightningCLI with OmegaConf interpolation."""
from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from modalities import load_entry_points

from .data import PreferenceDataModule
from .module import AlignModule


def main(args=None) -> None:
    load_entry_points()  # installed packages' adapters become known by class name
    LightningCLI(
        AlignModule,
        PreferenceDataModule,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
