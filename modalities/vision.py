"""Shared vision pieces for the image, multi-image and video adapters.

The encoder is any Hugging Face vision tower loaded with ``from_pretrained`` (SigLIP, CLIP, or the tiny
SigLIP in ``assets/``). Input size and normalisation come from the encoder's own preprocessor config,
so a pretrained encoder sees pixels the way it was trained. The encoder is chosen by its declared
``model_type``, never by its name.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from .base import BadSample, check_pretrained

# Full two-tower checkpoints (SigLIP, CLIP) are loaded as their vision tower only: model_type -> the
# transformers class name (imported when an encoder is loaded, so importing an adapter stays light).
VISION_TOWERS = {"siglip": "SiglipVisionModel", "clip": "CLIPVisionModel"}
# Pixel cap against decompression bombs: 64 megapixels is far above any sane training image.
MAX_PIXELS = 64_000_000


def load_vision_encoder(path: str, trust_remote_code: bool = False) -> nn.Module:
    import transformers

    check_pretrained(path, "vision encoder")
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    tower = VISION_TOWERS.get(config.model_type)
    if tower is not None:
        return getattr(transformers, tower).from_pretrained(path)
    return transformers.AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)


def vision_preprocessing(path: str, encoder_config) -> tuple[int, list[float], list[float]]:
    """(image_size, mean, std) from the encoder's preprocessor_config.json, else its config."""
    size = getattr(encoder_config, "image_size", 224)
    mean, std = [0.5] * 3, [0.5] * 3
    cfg_file = Path(path) / "preprocessor_config.json"
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        s = cfg.get("size", {})
        size = s.get("height", s.get("shortest_edge", size)) if isinstance(s, dict) else s
        size = cfg.get("crop_size", {}).get("height", size) if isinstance(cfg.get("crop_size"), dict) else size
    return int(size), list(mean), list(std)


def decode_image(data: bytes) -> Image.Image:
    """Image bytes -> an 8-bit RGB ``PIL.Image``, upright and with its tones kept:

    - the EXIF orientation is applied (phone photos are stored sideways with a rotate tag);
    - 16-bit and 32-bit grey (PNG ``I;16``, ``I``) and float (``F``) images are scaled to 8 bits, not clipped
      (Pillow's own ``convert("RGB")`` clips them to 255, so a 16-bit PNG came out all white);
    - images with transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) are laid over white,
      as Hugging Face's image processors do, instead of showing whatever colour the transparent pixels hold;
    - palette, CMYK, 1-bit and the other Pillow modes are converted to RGB.

    An animated GIF or a multi-page TIFF gives its first frame."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise BadSample(f"image of {img.width}x{img.height} pixels exceeds the {MAX_PIXELS} pixel limit")
        img.load()
    except BadSample:
        raise
    except Exception as e:  # Pillow raises many types for bad bytes
        raise BadSample(f"cannot decode image: {type(e).__name__}: {e}") from None
    try:
        return to_rgb(upright(img))
    except Exception as e:
        raise BadSample(f"cannot convert image ({img.format} {img.mode}) to RGB: {type(e).__name__}: {e}") from None


def upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation (tag 274) applied. A broken EXIF block is
    ignored, as viewers do."""
    try:
        orientation = img.getexif().get(274, 1)
    except Exception:
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see ``decode_image``)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_grey_to_8bit(np.asarray(img), mode)).convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, ...


def _grey_to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of more than 8 bits -> uint8. 16-bit modes (``I;16*``, and ``I`` holding values up to 65535,
    as Pillow opens some 16-bit PNGs and TIFFs) map 0..65535 onto 0..255; floats in [0, 1] are scaled by 255;
    anything else is stretched from its own minimum to its maximum."""
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi > 255 and hi <= 65535):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        a = a * 255.0
    elif lo < 0 or hi > 255:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_pixels(frames: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> normalised float [..., 3, H, W]."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)).div_(255.0)  # copies: decoder buffers are read-only
    x = x.movedim(-1, -3)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x - m) / s


class VisionTower(nn.Module):
    """Encoder + optional spatial pooling; output ``[n, tokens, encoder_hidden]``."""

    def __init__(self, encoder: str, spatial_pool: int = 1, trust_remote_code: bool = False,
                 feature_layer: int | None = None):
        super().__init__()
        self.feature_layer = feature_layer
        self.encoder = load_vision_encoder(encoder, trust_remote_code)
        self.image_size, self.mean, self.std = vision_preprocessing(encoder, self.encoder.config)
        self.hidden_size = self.encoder.config.hidden_size
        patch = self.encoder.config.patch_size
        self.grid = self.image_size // patch
        if self.grid % spatial_pool:
            raise ValueError(f"spatial_pool={spatial_pool} must divide the {self.grid}x{self.grid} patch grid")
        self.spatial_pool = spatial_pool
        # CLIP prepends a class token; SigLIP does not. Declared by the config class, not guessed.
        self.skip_cls = int(self.encoder.config.model_type == "clip_vision_model")

    @property
    def tokens_per_image(self) -> int:
        return (self.grid // self.spatial_pool) ** 2

    def save(self, directory: Path) -> str:
        """Encoder weights and config plus its preprocessing, reloadable by this class."""
        self.encoder.save_pretrained(directory)
        cfg = {"image_mean": self.mean, "image_std": self.std, "size": {"height": self.image_size, "width": self.image_size}}
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps(cfg))
        return str(directory)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.feature_layer is None:  # the encoder's output, final layer norm included
            h = self.encoder(pixel_values=pixels).last_hidden_state
        else:  # one layer's hidden states, before any final norm (what LLaVA reads)
            h = self.encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[self.feature_layer]
        h = h[:, self.skip_cls:]
        if self.spatial_pool > 1:
            n, _, d = h.shape
            h = h.transpose(1, 2).reshape(n, d, self.grid, self.grid)
            h = nn.functional.avg_pool2d(h, self.spatial_pool).flatten(2).transpose(1, 2)
        return h
