"""The training data flow: shards -> samples -> batches (``pipeline.py``), the sample schema, collate, and the
DataModule. Names are imported on first use, so ``anyalign.data.schema`` alone stays light."""
from __future__ import annotations

import importlib

_LAZY = {"PreferenceDataModule": ".module", "Skipped": ".pipeline"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'anyalign.data' has no attribute {name!r}")
