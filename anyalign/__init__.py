"""anyalign: any-modality preference alignment for multimodal LLMs."""
from .data import PreferenceDataModule
from .export import load_aligned, save_aligned
from .losses import LOSSES
from .model import MultimodalLM
from .module import AlignModule

__all__ = ["LOSSES", "AlignModule", "MultimodalLM", "PreferenceDataModule", "load_aligned", "save_aligned"]
__version__ = "0.1.0"
