"""Modality adapters: one file per modality, composed into the model as a dict ``{modality: adapter}``."""
from .base import BadSample, ModalityAdapter
from .image import ImageAdapter
from .registry import ADAPTERS, get_adapter_class, load_entry_points
from .video import VideoAdapter

__all__ = ["ADAPTERS", "BadSample", "ImageAdapter", "ModalityAdapter", "VideoAdapter", "get_adapter_class",
           "load_entry_points"]
