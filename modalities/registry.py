"""Adapter registry: built-in adapters by name, plus any installed package's adapters declared in the
``anyalign.modalities`` entry-point group (``name = "package.module:AdapterClass"``).

YAML configs name adapters by ``class_path``; the registry lets them use the short name instead and
gives every error message the list of known names.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from .audio import AudioAdapter
from .base import ModalityAdapter
from .image import ImageAdapter
from .multi_image import MultiImageAdapter
from .video import VideoAdapter

ADAPTERS: dict[str, type[ModalityAdapter]] = {"image": ImageAdapter, "multi_image": MultiImageAdapter,
                                              "video": VideoAdapter, "audio": AudioAdapter}


def load_entry_points() -> dict[str, type[ModalityAdapter]]:
    for ep in entry_points(group="anyalign.modalities"):
        if ep.name not in ADAPTERS:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, ModalityAdapter)):
                raise TypeError(f"entry point anyalign.modalities:{ep.name} -> {ep.value} is not a ModalityAdapter")
            ADAPTERS[ep.name] = cls
    return ADAPTERS


def get_adapter_class(name: str) -> type[ModalityAdapter]:
    load_entry_points()
    if name not in ADAPTERS:
        raise KeyError(f"unknown modality adapter {name!r}; known: {sorted(ADAPTERS)} "
                       "(or give a class_path to any ModalityAdapter subclass)")
    return ADAPTERS[name]
