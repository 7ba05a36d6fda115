"""Export and reload an aligned model in Hugging Face format.

Layout of an export directory::

    lm/                       the causal LM and its tokenizer (save_pretrained, safetensors)
    llava/                    the same model as a LlavaForConditionalGeneration + LlavaProcessor, when it is one
                              (one image adapter reading a layer of a SigLIP/CLIP tower, no pooling, 2-layer MLP)
    adapters/<name>/          adapter.safetensors (its full state dict) + whatever it needs to be rebuilt
                              (e.g. encoder/ with the vision encoder's config)
    anyalign.json             adapter class paths and init args, model settings
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from safetensors.torch import save_file

from .model import MultimodalLM, export_adapters, load_export_weights


def _class_path(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def save_aligned(model: MultimodalLM, directory: str | Path) -> Path:
    """A pretrained family's model is written in its own format (``FamilyLM.save_pretrained``); an assembled one
    in the layout above."""
    if hasattr(model, "save_pretrained"):
        return model.save_pretrained(directory)
    out = Path(directory)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    lm = model.lm
    if hasattr(lm, "merge_and_unload"):  # LoRA: export the merged weights, a plain HF model
        lm = copy.deepcopy(lm).merge_and_unload()
    lm.save_pretrained(out / "lm")
    model.tokenizer.save_pretrained(out / "lm")
    adapters = {}
    for name, adapter in model.adapters.items():
        d = out / "adapters" / name
        d.mkdir(parents=True, exist_ok=True)
        overrides = adapter.export(d)
        # paths written relative to the export, so the directory can be moved as a whole
        overrides = {k: str(Path(v).relative_to(out)) if isinstance(v, str) and Path(v).is_relative_to(out)
                     else v for k, v in overrides.items()}
        state = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
        save_file(state, str(d / "adapter.safetensors"))
        adapters[name] = {"class_path": _class_path(adapter), "init_args": adapter.init_args | overrides,
                          "relative": sorted(overrides)}
    meta = {"format": "anyalign-export/1", "adapters": adapters}
    if llava_unsupported_reason(model) is None:  # the same model in a standard format: LLaVA
        meta["llava"] = str(save_llava(model, out / "llava", lm).relative_to(out))
    (out / "anyalign.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def llava_unsupported_reason(model: MultimodalLM) -> str | None:
    """None if the assembled model is exactly a LLaVA (one image adapter reading one layer of a SigLIP or CLIP
    tower, no pooling, a 2-layer GELU MLP projector), else why not."""
    from modalities import ImageAdapter
    if set(model.adapters) != {"image"} or not isinstance(model.adapters["image"], ImageAdapter):
        return f"adapters {sorted(model.adapters)}: LLaVA has one image adapter"
    adapter = model.adapters["image"]
    tower = adapter.tower
    if tower.feature_layer is None:
        return "the image adapter reads the encoder's output (final layer norm included); LLaVA reads a layer's " \
               "hidden states: set feature_layer (e.g. -2)"
    if tower.spatial_pool != 1 or adapter.projector_depth != 2:
        return "LLaVA has no spatial pooling and a 2-layer projector"
    if tower.encoder.config.model_type not in ("siglip_vision_model", "clip_vision_model"):
        return f"encoder {tower.encoder.config.model_type}: LLaVA takes SigLIP or CLIP"
    return None


def save_llava(model: MultimodalLM, directory: str | Path, lm=None) -> Path:
    """Write an assembled model that is exactly a LLaVA (``llava_unsupported_reason``) as
    ``LlavaForConditionalGeneration`` + ``LlavaProcessor``: ``from_pretrained`` loads it, and its forward gives the
    assembled model's logits on the same pixels and ids."""
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              SiglipImageProcessor)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lm = lm if lm is not None else model.lm
    if hasattr(lm, "merge_and_unload"):
        lm = copy.deepcopy(lm).merge_and_unload()
    adapter = model.adapters["image"]
    tower = adapter.tower
    clip = tower.encoder.config.model_type == "clip_vision_model"
    config = LlavaConfig(vision_config=tower.encoder.config.to_dict(), text_config=lm.config.to_dict(),
                         image_token_id=model.media_token_ids["image"], projector_hidden_act="gelu",
                         vision_feature_select_strategy="default" if clip else "full",
                         vision_feature_layer=tower.feature_layer, image_seq_length=tower.tokens_per_image,
                         multimodal_projector_bias=True, tie_word_embeddings=lm.config.tie_word_embeddings)
    llava = LlavaForConditionalGeneration(config).to(next(lm.parameters()).dtype)
    state = {f"model.vision_tower.{k}": v for k, v in tower.encoder.state_dict().items()}
    proj = adapter.projector
    state |= {"model.multi_modal_projector.linear_1.weight": proj[0].weight, "model.multi_modal_projector.linear_1.bias":
              proj[0].bias, "model.multi_modal_projector.linear_2.weight": proj[2].weight,
              "model.multi_modal_projector.linear_2.bias": proj[2].bias}
    state |= {f"model.language_model.{k}": v for k, v in lm.get_decoder().state_dict().items()}
    state["lm_head.weight"] = lm.get_output_embeddings().weight
    missing, unexpected = llava.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"LLaVA export: missing {missing[:4]}, unexpected {unexpected[:4]}")
    llava.generation_config = lm.generation_config
    llava.save_pretrained(out)
    processor_cls = CLIPImageProcessor if clip else SiglipImageProcessor
    size = {"shortest_edge": tower.image_size} if clip else {"height": tower.image_size, "width": tower.image_size}
    images = processor_cls(size=size, crop_size={"height": tower.image_size, "width": tower.image_size},
                           do_center_crop=clip, image_mean=tower.mean, image_std=tower.std, resample=3)
    processor = LlavaProcessor(image_processor=images, tokenizer=model.tokenizer,
                               patch_size=tower.encoder.config.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               chat_template=model.tokenizer.chat_template, image_token=adapter.placeholder,
                               num_additional_image_tokens=int(clip))
    processor.save_pretrained(out)
    return out


def load_aligned(directory: str | Path, trust_remote_code: bool = False) -> MultimodalLM:
    """Rebuild the exported model: an assembled MultimodalLM (LM, tokenizer with media tokens, adapters with their
    weights), or a pretrained family's export (its own format) as a FamilyLM."""
    src = Path(directory)
    meta_file = src / "anyalign.json"
    if not meta_file.is_file():
        from .families import detect
        if (src / "config.json").is_file() and detect(str(src)) is not None:
            # a pretrained family's export (or any checkpoint of a family): its own format
            from .families import build_policy
            return build_policy(str(src), {}, trust_remote_code=trust_remote_code).eval()
        raise FileNotFoundError(f"not an anyalign export (no anyalign.json) nor a checkpoint of a known "
                                f"multimodal family: {src}")
    model = MultimodalLM(str(src / "lm"), export_adapters(src), trust_remote_code=trust_remote_code)
    return load_export_weights(model, src).eval()
