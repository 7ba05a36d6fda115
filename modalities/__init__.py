"""Modality adapters: one file per modality, composed into the model as a dict ``{modality: adapter}``."""
from .audio import AudioAdapter
from .base import BadSample, ModalityAdapter
from .image import ImageAdapter
from .multi_image import MultiImageAdapter
from .registry import ADAPTERS, get_adapter_class, load_entry_points
from .video import VideoAdapter

__all__ = ["ADAPTERS", "AudioAdapter", "BadSample", "ImageAdapter", "ModalityAdapter", "MultiImageAdapter",
           "VideoAdapter", "get_adapter_class", "load_entry_points"]
