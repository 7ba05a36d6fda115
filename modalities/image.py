"""Image adapter: Pillow decode, resize + normalise on CPU, vision tower + MLP projector on the model.

One item is one image; a prompt with several ``<image>`` markers takes several items, in order. Members:
jpg, jpeg, png, webp, gif, bmp, tif, tiff (HEIC/AVIF need a Pillow plugin and are not read). The decoder
(``vision.decode_image``) applies the EXIF orientation, scales 16-bit images to 8 bits, lays transparent
images over white and turns every other mode (palette, CMYK, ...) into RGB.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import ModalityAdapter, freeze, mlp_projector
from .corruptions import IMAGE_OPS
from .preview import THUMB, contact_sheet
from .vision import VisionTower, decode_image, to_pixels


class ImageAdapter(ModalityAdapter):
    placeholder = "<image>"
    operators = IMAGE_OPS
    reliance_operator = "null"
    extensions = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")

    def __init__(
        self,
        encoder: str = "assets/tiny-siglip",
        spatial_pool: int = 1,
        projector_depth: int = 2,
        freeze_encoder: bool = True,
        freeze_projector: bool = False,
        trust_remote_code: bool = False,
        feature_layer: int | None = None,
    ):
        """
        Args:
            encoder: Hugging Face vision encoder (local directory or hub id), e.g. a SigLIP or CLIP checkpoint.
            spatial_pool: average-pool the patch grid by this factor to cut tokens per image.
            projector_depth: number of Linear layers in the MLP projector.
            freeze_encoder: keep the vision encoder's weights fixed.
            freeze_projector: keep the projector's weights fixed.
            trust_remote_code: allow custom code from the encoder's repository (off unless you set it).
            feature_layer: None (default) takes the encoder's output, final layer norm included; an index takes
                that layer's hidden states instead (``-2``: LLaVA-1.5's choice). With an index, ``spatial_pool: 1``
                and ``projector_depth: 2`` the model is exactly a LLaVA, and the export also writes it as one.
        """
        super().__init__()
        self.tower = VisionTower(encoder, spatial_pool, trust_remote_code, feature_layer)
        self.projector_depth = projector_depth
        self.freeze_encoder, self.freeze_projector = freeze_encoder, freeze_projector
        freeze(self.tower, freeze_encoder)
        self.projector = None

    def bind(self, lm_hidden_size: int) -> None:
        self.projector = mlp_projector(self.tower.hidden_size, lm_hidden_size, self.projector_depth)
        freeze(self.projector, self.freeze_projector)

    def decode(self, data: bytes, ext: str) -> Image.Image:
        return decode_image(data)

    def preprocess(self, raw: Image.Image) -> torch.Tensor:
        size = self.tower.image_size
        img = raw.resize((size, size), Image.Resampling.BICUBIC)
        return to_pixels(np.asarray(img), self.tower.mean, self.tower.std)

    def num_tokens(self, item: torch.Tensor) -> int:
        return self.tower.tokens_per_image

    def preview(self, data: bytes, ext: str) -> Image.Image:
        """The decoded image, scaled to fit a 192-pixel square."""
        return contact_sheet([self.decode(data, ext)], THUMB)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        return self.tower(batch)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)

    def export(self, directory) -> dict:
        return {"encoder": self.tower.save(directory / "encoder")}
