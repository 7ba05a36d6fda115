"""Pretrained multimodal families: ``model.lm`` names a checkpoint of a family transformers ships (LLaVA, Qwen2-VL,
Gemma 3, ...) and anyalign aligns that model as it is, with its own processor, chat template and towers, and
exports it in its own format. ``table.py`` holds everything in which the families differ."""
from __future__ import annotations

import json
from pathlib import Path

from .table import FAMILIES, Family, family_of


def model_type(lm: str, trust_remote_code: bool = False) -> str | None:
    """The checkpoint's ``model_type``, read from its config.json (a hub id: through transformers)."""
    local = Path(lm).expanduser() / "config.json"
    if local.is_file():
        return json.loads(local.read_text()).get("model_type")
    if Path(lm).expanduser().exists():
        return None
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(lm, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError):
        return None  # MultimodalLM reports the path with its own message


def detect(lm: str, trust_remote_code: bool = False) -> Family | None:
    kind = model_type(lm, trust_remote_code)
    return family_of(kind) if kind else None


def build_policy(lm: str, adapters: dict, attn_implementation: str = "sdpa", torch_dtype: str = "float32",
                 chat_template: str | None = None, gradient_checkpointing: bool = False,
                 trust_remote_code: bool = False, lora: dict | None = None, freeze: list[str] | None = None,
                 media: dict | None = None, processor_kwargs: dict | None = None):
    """A ``FamilyLM`` when ``lm`` is a checkpoint of a known multimodal family and no adapter is configured;
    otherwise a ``MultimodalLM`` assembled from a causal LM and the adapters."""
    from modalities.base import check_pretrained
    check_pretrained(lm, "model.lm")
    family = None if adapters else detect(lm, trust_remote_code)
    if family is not None:
        from .model import FamilyLM
        return FamilyLM(lm, family, attn_implementation, torch_dtype, chat_template, gradient_checkpointing,
                        trust_remote_code, lora, freeze, media, processor_kwargs)
    for key, value in (("freeze", freeze), ("media", media), ("processor_kwargs", processor_kwargs)):
        if value is not None:
            raise ValueError(f"model.{key} applies to a pretrained multimodal checkpoint in model.lm; {lm} is not "
                             f"one of a known family ({', '.join(FAMILIES)}) or adapters are configured")
    from ..model import MultimodalLM, check_export_adapters, export_adapters, is_export, load_export_weights
    if is_export(lm):  # an anyalign export (e.g. an SFT run's): its LM and its trained adapters, training goes on
        exported = export_adapters(lm)
        if adapters:
            check_export_adapters(lm, exported, dict(adapters))
        model = MultimodalLM(str(Path(lm) / "lm"), exported, attn_implementation, torch_dtype, chat_template,
                             gradient_checkpointing, trust_remote_code, lora)
        return load_export_weights(model, lm)
    return MultimodalLM(lm, dict(adapters), attn_implementation, torch_dtype, chat_template, gradient_checkpointing,
                        trust_remote_code, lora)


__all__ = ["FAMILIES", "Family", "build_policy", "detect", "family_of", "model_type"]
