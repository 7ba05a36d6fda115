"""anyalign: any-modality preference alignment for multimodal LLMs.

The names below are imported on first use (PEP 562), so ``import anyalign.data.schema`` or the dataset
converter does not pay for Lightning and transformers.
"""
from __future__ import annotations

import importlib

_LAZY = {"AlignModule": ".module", "MultimodalLM": ".model", "PreferenceDataModule": ".data.module",
         "LOSSES": ".losses", "load_aligned": ".export", "save_aligned": ".export", "generate": ".generation"}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'anyalign' has no attribute {name!r}")
