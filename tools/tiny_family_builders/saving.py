"""Saving a tiny family: the model (random weights, seed ``SEED``) and the processor, also where the processor's
video processor cannot be instantiated (no torchvision)."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

SEED = 0


def save_model(model_class: str, config, out: Path, *, eos_token_id, pad_token_id, bos_token_id=None) -> None:
    import torch
    import transformers

    torch.manual_seed(SEED)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # a matrix a family initialises to zero (Gemma 3's image projection) would make the
        for p in model.parameters():  # media contribute nothing: the tests could not see them
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos_token_id, pad_token_id, bos_token_id
    gen.do_sample = False
    model.save_pretrained(str(out))  # safetensors


def video_processor(class_name: str, **kwargs):
    """The family's video processor (torchvision-backed in transformers 5.x); without torchvision, its config is
    written as a dict so the directory is complete and loads wherever torchvision is installed."""
    import transformers
    if importlib.util.find_spec("torchvision") is not None:
        return getattr(transformers, class_name)(**kwargs)
    return _VideoProcessorConfig(class_name, kwargs)


@dataclass
class _VideoProcessorConfig:
    class_name: str
    kwargs: dict = field(default_factory=dict)


def _save_processor_without_video(processor_class: str, out: Path, video: _VideoProcessorConfig, **parts) -> None:
    """Write a processor whose video processor cannot be instantiated here (no torchvision) in the layout
    ``ProcessorMixin.save_pretrained`` writes: tokenizer files, chat_template.jinja, and one processor_config.json
    holding the processor's own arguments and each sub-processor's dict (the video processor's as the arguments given,
    every other setting being its class default when it loads)."""
    tokenizer = parts.pop("tokenizer")
    chat_template = parts.pop("chat_template")
    processor_kwargs = parts.pop("processor_kwargs", {})
    tokenizer.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(chat_template)
    cfg = {"processor_class": processor_class, **processor_kwargs}
    for name, part in parts.items():
        cfg[name] = part.to_dict()
    cfg["video_processor"] = {**video.kwargs, "video_processor_type": video.class_name}
    (out / "processor_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["processor_class"] = processor_class
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")


def save_processor(processor_class: str, out: Path, *, processor_kwargs: dict | None = None, **parts) -> None:
    """``processor_class(**parts, **processor_kwargs).save_pretrained(out)``; ``parts`` are the tokenizer, the
    chat_template and the sub-processors (a ``video_processor`` from ``video_processor()`` may be a bare config)."""
    import transformers
    video = parts.get("video_processor")
    if isinstance(video, _VideoProcessorConfig):
        parts = dict(parts)
        parts.pop("video_processor")
        _save_processor_without_video(processor_class, out, video, processor_kwargs=processor_kwargs or {}, **parts)
        return
    getattr(transformers, processor_class)(**parts, **(processor_kwargs or {})).save_pretrained(str(out))
