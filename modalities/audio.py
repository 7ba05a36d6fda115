"""Audio adapter: decode and resample on the CPU workers (``audio_decode.py``); log-mel features, encoder
(``audio_towers.py``), time pooling and the MLP projector on the model's device, batched.

Every clip is cropped or zero-padded to ``max_seconds`` on the CPU. Only the encoder positions covering
``max_seconds`` are kept (as Qwen2-Audio keeps the valid part of Whisper's 30 s window), then average-pooled
over time by ``pool`` (Qwen2-Audio pools Whisper by 2).

Negatives corrupt the sound, not the padding: the time operators (``reverse``, ``shift``, ``shuffle_segments``)
and ``noise`` act on the span from the first to the last non-zero sample, so a corrupted clip's silence, and the
length an encoder reads from it, are where the original's were (``modalities/corruptions.py``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .audio_decode import fit_length, read_audio
from .audio_towers import load_audio_encoder
from .base import ModalityAdapter, freeze, mlp_projector
from .corruptions import AUDIO_OPS
from .preview import spectrogram


class AudioAdapter(ModalityAdapter):
    placeholder = "<audio>"
    extensions = ("wav", "flac", "mp3", "ogg", "opus", "m4a")
    #: the soundtrack of a video container, read when the prompt has ``<audio>`` and no audio member
    container_extensions = ("mp4", "webm", "mov", "mkv")
    operators = AUDIO_OPS
    reliance_operator = "mute"

    def __init__(
        self,
        encoder: str = "assets/tiny-audio",
        max_seconds: float = 2.0,
        pool: int = 2,
        projector_depth: int = 2,
        freeze_encoder: bool = True,
        freeze_projector: bool = False,
    ):
        """
        Args:
            encoder: Hugging Face audio encoder (local directory or hub id) with its preprocessor_config.json:
                a Whisper checkpoint (its encoder is used) or an AST (ASTModel) checkpoint.
            max_seconds: every clip is cropped or zero-padded to this length.
            pool: average this many consecutive encoder positions into one token.
            projector_depth: number of Linear layers in the MLP projector.
            freeze_encoder: keep the audio encoder's weights fixed.
            freeze_projector: keep the projector's weights fixed.
        """
        super().__init__()
        if max_seconds <= 0 or pool < 1:
            raise ValueError("max_seconds must be > 0 and pool >= 1")
        self.tower = load_audio_encoder(encoder)
        self.sampling_rate = self.tower.sampling_rate
        self.max_seconds, self.pool = max_seconds, pool
        self.num_samples = round(max_seconds * self.sampling_rate)
        if self.num_samples > self.tower.window:
            raise ValueError(f"max_seconds={max_seconds} is longer than the encoder's window of "
                             f"{self.tower.window / self.sampling_rate:g} s")
        self.positions = self.tower.positions(self.num_samples)
        self.projector_depth, self.freeze_projector = projector_depth, freeze_projector
        freeze(self.tower, freeze_encoder)
        self.projector = None

    def bind(self, lm_hidden_size: int) -> None:
        self.projector = mlp_projector(self.tower.hidden_size, lm_hidden_size, self.projector_depth)
        freeze(self.projector, self.freeze_projector)

    def decode(self, data: bytes, ext: str) -> tuple[np.ndarray, int]:
        return read_audio(data, ext, self.max_seconds, self.sampling_rate)

    def preprocess(self, raw: tuple[np.ndarray, int]) -> torch.Tensor:
        return fit_length(*raw, self.sampling_rate, self.num_samples)

    def num_tokens(self, item: torch.Tensor) -> int:
        return math.ceil(self.positions / self.pool)

    def preview(self, data: bytes, ext: str):
        """The log-mel spectrogram of the decoded clip (up to ``max_seconds``, at its own rate), in colour."""
        wave, sr = self.decode(data, ext)
        return spectrogram(wave, sr)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        h = self.tower(batch)[:, : self.positions]
        if self.pool > 1:  # [B, T, D] -> [B, ceil(T / pool), D]; the last window averages what it has
            h = nn.functional.avg_pool1d(h.transpose(1, 2), self.pool, self.pool, ceil_mode=True).transpose(1, 2)
        return h

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)

    def export(self, directory) -> dict:
        out = Path(directory) / "encoder"
        self.tower.encoder.save_pretrained(out)
        self.tower.extractor.save_pretrained(out)
        return {"encoder": str(out)}
