"""What a pretrained family's entry holds (``Family``) and the functions entries share. The entries: ``table.py``."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    media: dict[str, dict[str, str]]                  # modality -> {processor key: merge rule}
    encoders: tuple[str, ...]
    projectors: tuple[str, ...]
    language_model: str = "language_model"
    positions: Callable | None = None
    bidirectional: tuple[str, ...] = ()
    call_kwargs: Callable[[object, set], dict] | None = None
    tokenizer: Callable | None = None
    generate_kwargs: Callable | None = None
    video_metadata: bool = False                      # the processor is told each video's sampled frame rate
    model_class: str | None = None                    # the class to load, when not the checkpoint's own
    processor_keys: dict[str, str] = field(default_factory=lambda: {"image": "images", "video": "videos",
                                                                    "audio": "audio"})
    notes: str = ""


def _token_id(config, modality: str) -> int | None:
    for attr in (f"{modality}_token_id", f"{modality}_token_index"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    return None


def mrope_positions(hf_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: dict) -> torch.Tensor:
    """Qwen2-VL / Qwen2.5-VL: 3-D positions ``(3, rows, T)`` from the family's own ``get_rope_index``."""
    cfg = hf_model.config
    mm = torch.zeros_like(input_ids, dtype=torch.int32)
    for value, modality in ((1, "image"), (2, "video")):
        tid = _token_id(cfg, modality)
        if tid is not None:
            mm[input_ids == tid] = value
    kwargs = {}
    if "second_per_grid_ts" in media:
        kwargs["second_per_grid_ts"] = media["second_per_grid_ts"]
    positions, _ = hf_model.model.get_rope_index(input_ids, mm, image_grid_thw=media.get("image_grid_thw"),
                                                 video_grid_thw=media.get("video_grid_thw"),
                                                 attention_mask=attention_mask, **kwargs)
    return positions


def sampling_rate(processor, present: set) -> dict:
    """``call_kwargs`` of the audio families: audio at the feature extractor's sampling rate."""
    return {"sampling_rate": processor.feature_extractor.sampling_rate} if "audio" in present else {}


def merge(values: list[torch.Tensor], rule: str) -> torch.Tensor:
    """One processor key's tensors of several rows -> the batch's (see the module docstring for the rules)."""
    if rule == "cat0":
        return torch.cat(values, 0)
    if rule == "cat1":
        return torch.cat(values, 1)
    if rule == "pad1":
        width = max(v.shape[1] for v in values)
        padded = [torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, width - v.shape[1])) for v in values]
        return torch.cat(padded, 0)
    raise ValueError(f"unknown merge rule {rule!r}")
