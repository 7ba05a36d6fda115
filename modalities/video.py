"""Video adapter: decord decodes only the sampled frames, already at the encoder's resolution; frames
go through the vision tower; optional temporal pooling (mean over consecutive frames) and spatial
pooling bound the token count.

Sampling: ``num_frames`` uniformly over the clip (segment centres), or, with ``fps``, frames at that rate
from the start, at most ``num_frames``. Clips may yield different frame counts, so a batch is a dict of
all frames concatenated plus per-item counts, and ``forward`` returns one ``[tokens_i, hidden]`` per item.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from .base import BadSample, ModalityAdapter, freeze, mlp_projector
from .corruptions import VIDEO_OPS
from .preview import FRAME, contact_sheet
from .vision import VisionTower, to_pixels


def sample_indices(num_available: int, num_frames: int, avg_fps: float, fps: float | None) -> np.ndarray:
    if fps:
        step = max(avg_fps / fps, 1.0)
        idx = np.arange(0, num_available, step)[:num_frames]
    else:
        idx = (np.arange(num_frames) + 0.5) * num_available / num_frames
    return np.minimum(idx.astype(np.int64), num_available - 1)


def decode_size(size: int | None) -> int | None:
    """decord2 (FFmpeg 8) fails to scale at decode time to some small widths (``from_size == to_size``; e.g.
    16, 24, 32, 48, 96, 144 in docs/toolchain.md) and has worked for every multiple of 64 tried. Decode at
    the target rounded up to 64, and resize the rest on the CPU."""
    return -(-size // 64) * 64 if size else None


def read_frames(data: bytes, num_frames: int, size: int | None = None, fps: float | None = None) -> np.ndarray:
    """Decode the sampled frames of a clip from its bytes, scaled to about ``size`` square while decoding:
    uint8 ``[frames, H, W, 3]``."""
    import decord

    try:
        size = decode_size(size)
        kw = {"width": size, "height": size} if size else {}
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1, **kw)
        n = len(vr)
    except Exception as e:  # decord raises DECORDError / RuntimeError on bad streams
        raise BadSample(f"cannot open video: {type(e).__name__}: {str(e)[:200]}") from None
    if n == 0:
        raise BadSample("video has 0 frames")
    idx = sample_indices(n, num_frames, vr.get_avg_fps() or 1.0, fps)
    try:
        return vr.get_batch(idx.tolist()).asnumpy()
    except Exception as e:
        raise BadSample(f"cannot decode video frames: {type(e).__name__}: {str(e)[:200]}") from None


class VideoAdapter(ModalityAdapter):
    placeholder = "<video>"
    operators = VIDEO_OPS
    extensions = ("mp4", "webm", "mkv", "avi", "mov")

    def __init__(
        self,
        encoder: str = "assets/tiny-siglip",
        num_frames: int = 8,
        fps: float | None = None,
        temporal_pool: int = 1,
        spatial_pool: int = 1,
        projector_depth: int = 2,
        freeze_encoder: bool = True,
        freeze_projector: bool = False,
        trust_remote_code: bool = False,
    ):
        """
        Args:
            encoder: Hugging Face vision encoder used on every frame (local directory or hub id).
            num_frames: frames sampled uniformly over the clip (the cap when ``fps`` is set).
            fps: sample at this rate from the start of the clip instead of uniformly.
            temporal_pool: average this many consecutive frames' features into one.
            spatial_pool: average-pool each frame's patch grid by this factor.
            projector_depth: number of Linear layers in the MLP projector.
            freeze_encoder: keep the vision encoder's weights fixed.
            freeze_projector: keep the projector's weights fixed.
            trust_remote_code: allow custom code from the encoder's repository (off unless you set it).
        """
        super().__init__()
        if num_frames < 1 or temporal_pool < 1:
            raise ValueError("num_frames and temporal_pool must be >= 1")
        self.tower = VisionTower(encoder, spatial_pool, trust_remote_code)
        self.num_frames, self.fps, self.temporal_pool = num_frames, fps, temporal_pool
        self.projector_depth = projector_depth
        self.freeze_projector = freeze_projector
        freeze(self.tower, freeze_encoder)
        self.projector = None

    def bind(self, lm_hidden_size: int) -> None:
        self.projector = mlp_projector(self.tower.hidden_size, lm_hidden_size, self.projector_depth)
        freeze(self.projector, self.freeze_projector)

    def decode(self, data: bytes, ext: str) -> np.ndarray:
        return read_frames(data, self.num_frames, self.tower.image_size, self.fps)

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        frames = raw
        if frames.shape[1:3] != (self.tower.image_size,) * 2:  # decoders that ignore the size hint
            from PIL import Image
            s = self.tower.image_size
            frames = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.Resampling.BICUBIC))
                               for f in frames])
        return to_pixels(frames, self.tower.mean, self.tower.std)

    def num_tokens(self, item: torch.Tensor) -> int:
        return math.ceil(item.shape[0] / self.temporal_pool) * self.tower.tokens_per_image

    def preview(self, data: bytes, ext: str):
        """The frames training samples (``num_frames``, ``fps``), decoded at their own resolution and laid
        out as a contact sheet, 8 to a row, each scaled to fit a 112-pixel square."""
        from PIL import Image

        frames = read_frames(data, self.num_frames, None, self.fps)
        return contact_sheet([Image.fromarray(f) for f in frames], FRAME)

    def collate(self, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.cat(items), "frames": torch.tensor([len(x) for x in items])}

    def encode(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feats = self.tower(batch["pixels"])  # [all frames, tokens, encoder hidden]
        clips = []
        for clip in feats.split(batch["frames"].tolist()):
            if self.temporal_pool > 1:
                pad = -len(clip) % self.temporal_pool  # repeat the last frame to fill the last group
                clip = torch.cat([clip, clip[-1:].expand(pad, -1, -1)]) if pad else clip
                clip = clip.view(-1, self.temporal_pool, *clip.shape[1:]).mean(1)
            clips.append(clip.flatten(0, 1))
        return clips

    def project(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        # pool first, project once: the projector runs on the pooled tokens only
        return list(self.projector(torch.cat(clips)).split([len(c) for c in clips]))

    def export(self, directory) -> dict:
        return {"encoder": self.tower.save(directory / "encoder")}
