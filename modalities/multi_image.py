"""Multi-image adapter: several images per sample (``KEY.0.jpg``, ``KEY.1.png``, ...), one ``<image>``
marker each, spliced in item order. It is the image adapter (same decode, preprocessing, tower and
projector) plus a cap on the number of images, checked before any of them is decoded, and the
corruption operators that act on the set of images (``shuffle_order``, ``swap_one``, ``drop_one``).
"""
from __future__ import annotations

from .base import BadSample
from .corruptions import MULTI_IMAGE_OPS
from .image import ImageAdapter


class MultiImageAdapter(ImageAdapter):
    operators = MULTI_IMAGE_OPS  # the image operators plus the ones that act on the set (order, one image)

    def __init__(self, max_images: int = 4, **kwargs):
        """
        Args:
            max_images: a sample with more images than this is skipped (bounds tokens and decode time).
            **kwargs: the image adapter's options (``encoder``, ``spatial_pool``, ``projector_depth``,
                ``freeze_encoder``, ``freeze_projector``, ``trust_remote_code``), passed on to ``ImageAdapter``.
        """
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        super().__init__(**kwargs)
        self.max_images = max_images

    def check_items(self, count: int) -> None:
        if count > self.max_images:
            raise BadSample(f"sample has {count} images; max_images is {self.max_images}")
