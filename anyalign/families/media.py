"""The data side of a pretrained family: media decoded by anyalign's safe decoders, processed by the family's own
processor in the data workers.

An item stays a raw tensor until the sample is tokenized, so the negatives' operators (``modalities/corruptions.py``)
work on the media as decoded: images ``[3, H, W]`` and video frames ``[T, 3, H, W]`` in [-1, 1] at their own size,
audio a mono waveform at the processor's sampling rate. ``FamilyTokenizer`` (``template.py``) runs the processor on a
sample's prompt and media and replaces each modality's item list by ``ProcessedItems``: the same raw items, plus the
processor's tensors for them and the number of placeholder tokens they take. A corrupted copy is processed again
from its corrupted raw items (``FamilyMedia.corrupt``), and must take the same number of tokens.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modalities import BadSample, ModalityAdapter
from modalities.audio_decode import read_audio
from modalities.corruptions import AUDIO_OPS, MULTI_IMAGE_OPS, VIDEO_OPS
from modalities.audio import AudioAdapter
from modalities.image import ImageAdapter
from modalities.video import VideoAdapter, read_frames
from modalities.vision import decode_image

from .spec import Family, merge


class ProcessedItems(list):
    """One sample's raw items of one modality, with the processor's tensors for them (``inputs``) and the number
    of placeholder tokens they take in the prompt (``tokens``)."""

    def __init__(self, items, inputs: dict[str, torch.Tensor], tokens: int):
        super().__init__(items)
        self.inputs, self.tokens = inputs, tokens


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] channels-first -> uint8 channels-last, what processors take."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def from_uint8(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).movedim(-1, -3).float() / 127.5 - 1


def fit_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A donor item brought to another item's shape (size, frames, samples), so a swapped-in item takes the
    same number of tokens."""
    if x.shape == like.shape:
        return x
    if x.dim() == 1:  # audio: crop or zero-pad
        out = torch.zeros_like(like)
        n = min(len(x), len(like))
        out[:n] = x[:n]
        return out
    if x.dim() == 4:  # video: frames first
        idx = torch.linspace(0, x.shape[0] - 1, like.shape[0]).round().long()
        x = x[idx]
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return F.interpolate(x[None], size=like.shape[-2:], mode="bilinear", align_corners=False)[0]


class FamilyMedia(ModalityAdapter):
    """One modality of a pretrained family: anyalign's decoders and operators, the family's processor. It has no
    parameters of its own: the model's towers encode the items (``FamilyLM``)."""

    modality = ""

    def __init__(self, **options):
        """``options``: decoding settings (video: ``num_frames``, ``frame_size``, ``fps``; audio: ``max_seconds``)."""
        super().__init__()
        self.options = options
        self.processor, self.family, self.placeholder_id = None, None, -1

    def attach(self, processor, family: Family, placeholder_id: int) -> FamilyMedia:
        """The family's processor and placeholder id (kept out of ``init_args``, which fingerprints record)."""
        self.processor, self.family, self.placeholder_id = processor, family, placeholder_id
        return self

    # ---- CPU side ----
    def to_processor(self, item: torch.Tensor) -> Any:
        raise NotImplementedError

    def process(self, items: list[torch.Tensor], text: str | None = None) -> tuple[dict, list[int]]:
        """Run the family's processor on ``items`` alone, under the family's own markers for them."""
        if text is None:
            content = [{"type": self.modality} for _ in items]
            text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        key = self.family.processor_keys[self.modality]
        kwargs = self.family.call_kwargs(self.processor, {self.modality}) if self.family.call_kwargs else {}
        kwargs.update(self.call_kwargs(items))
        out = self.processor(text=[text], **{key: [self.to_processor(x) for x in items]}, return_tensors="pt", **kwargs)
        return out

    def call_kwargs(self, items: list[torch.Tensor]) -> dict:
        """Processor arguments these items need beyond themselves (a video's frame rate)."""
        return {}

    def select(self, out) -> tuple[dict[str, torch.Tensor], int]:
        inputs = {k: out[k] for k in self.family.media[self.modality] if k in out}
        return inputs, int((out["input_ids"] == self.placeholder_id).sum())

    def corrupt(self, items, op, rng, donor=None, **params):
        raws = list(items)
        if donor is not None:
            donor = [fit_like(d, raws[min(i, len(raws) - 1)]) for i, d in enumerate(donor)]
        corrupted = super().corrupt(raws, op, rng, donor=donor, **params)
        for before, after in zip(raws, corrupted):  # what an item knows of itself (a video's frame rate)
            if hasattr(before, "sampled_fps"):
                after.sampled_fps = before.sampled_fps
        inputs, tokens = self.select(self.process(corrupted))
        if isinstance(items, ProcessedItems) and tokens != items.tokens:
            raise RuntimeError(f"{self.modality} operator {op!r} changed the item's token count ({items.tokens} -> "
                               f"{tokens}) under this family's processor; choose a shape-preserving operator")
        return ProcessedItems(corrupted, inputs, tokens)

    def collate_samples(self, groups: list[ProcessedItems]) -> dict[str, torch.Tensor]:
        rules = self.family.media[self.modality]
        keys = [k for k in rules if k in groups[0].inputs]
        return {k: merge([g.inputs[k] for g in groups], rules[k]) for k in keys}

    def num_tokens(self, item) -> int:  # the processor counts them (FamilyTokenizer)
        raise NotImplementedError("a pretrained family's processor expands the placeholders")

    # ---- model side: none (the family model's towers) ----
    def forward(self, batch, features=None):
        raise NotImplementedError("FamilyLM runs the family's own towers")


class FamilyImage(FamilyMedia):
    modality = "image"
    placeholder = "<image>"
    extensions = ImageAdapter.extensions
    operators = MULTI_IMAGE_OPS
    reliance_operator = "null"

    def decode(self, data: bytes, ext: str):
        return decode_image(data)

    def preprocess(self, raw) -> torch.Tensor:
        return from_uint8(np.asarray(raw.convert("RGB")))

    def to_processor(self, item: torch.Tensor):
        from PIL import Image
        return Image.fromarray(to_uint8(item))


class FamilyVideo(FamilyMedia):
    """Frames sampled by anyalign's decoder (``num_frames`` spread over the clip, or one every ``1/fps`` s up to
    ``num_frames``; ``frame_size`` caps the decode size). Each item keeps its sampled frame rate
    (``sampled_fps``), which families that place frames in time are told (``video_metadata``)."""

    modality = "video"
    placeholder = "<video>"
    extensions = VideoAdapter.extensions
    operators = VIDEO_OPS
    reliance_operator = "static"

    def decode(self, data: bytes, ext: str):
        return read_frames(data, self.options.get("num_frames", 8), self.options.get("frame_size"),
                           self.options.get("fps"), upscale=False, with_rate=True)

    def preprocess(self, raw) -> torch.Tensor:
        frames, rate = raw
        item = from_uint8(frames)
        item.sampled_fps = rate
        return item

    def to_processor(self, item: torch.Tensor):
        return to_uint8(item)

    def call_kwargs(self, items: list[torch.Tensor]) -> dict:
        if not self.family.video_metadata or not all(hasattr(x, "sampled_fps") for x in items):
            return {}
        return {"video_metadata": [{"fps": x.sampled_fps, "total_num_frames": len(x)} for x in items]}


class FamilyAudio(FamilyMedia):
    modality = "audio"
    placeholder = "<audio>"
    extensions = AudioAdapter.extensions
    container_extensions = AudioAdapter.container_extensions
    operators = AUDIO_OPS
    reliance_operator = "mute"

    @property
    def sampling_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def decode(self, data: bytes, ext: str):
        return read_audio(data, ext, self.options.get("max_seconds", 30.0), self.sampling_rate)

    def preprocess(self, raw) -> torch.Tensor:
        wave, sr = raw
        if sr != self.sampling_rate:
            import librosa
            wave = librosa.resample(wave, orig_sr=sr, target_sr=self.sampling_rate, res_type="soxr_hq")
        if len(wave) == 0:
            raise BadSample("audio has zero length")
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))

    def to_processor(self, item: torch.Tensor):
        return item.numpy()


MEDIA_CLASSES = {"image": FamilyImage, "video": FamilyVideo, "audio": FamilyAudio}
