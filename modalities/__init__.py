"""Modality adapters: one file per modality, composed into the model as a dict ``{modality: adapter}``.

The public names are loaded on first use (PEP 562), so ``from modalities import BadSample`` costs only
``modalities.base`` (torch), and no adapter module, encoder library or decoder is imported until asked for.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the submodule that defines it
_HOMES = {"AudioAdapter": "audio", "BadSample": "base", "ModalityAdapter": "base", "ImageAdapter": "image",
          "MultiImageAdapter": "multi_image", "VideoAdapter": "video", "ADAPTERS": "registry",
          "get_adapter_class": "registry", "load_entry_points": "registry"}

__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads them
    from .audio import AudioAdapter
    from .base import BadSample, ModalityAdapter
    from .image import ImageAdapter
    from .multi_image import MultiImageAdapter
    from .registry import ADAPTERS, get_adapter_class, load_entry_points
    from .video import VideoAdapter


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
