"""WebDataset pipeline, sample schema, collate, DataModule."""
from .module import PreferenceDataModule
from .pipeline import Skipped

__all__ = ["PreferenceDataModule", "Skipped"]
