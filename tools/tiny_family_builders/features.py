"""Placeholders and features: how many placeholder ids the processor wrote, and how many rows the family's own
feature function returns for the same inputs (the model scatters one row per placeholder; both must agree)."""
from __future__ import annotations


def placeholder_counts(model, input_ids) -> dict[str, int]:
    cfg = model.config
    counts = {}
    for modality in ("image", "video", "audio"):
        token_id = getattr(cfg, f"{modality}_token_id", None)
        if token_id is not None:
            counts[modality] = int((input_ids == token_id).sum())
    return {k: v for k, v in counts.items() if v}


def feature_counts(family: str, model, inputs) -> dict[str, int]:
    """Rows of features per modality, from the family's feature function (see docs/families.md) on processor outputs."""
    import torch

    def rows(pooled) -> int:  # a tensor (..., D) or a list/tuple of per-item (n, D) tensors
        if isinstance(pooled, torch.Tensor):
            return pooled.numel() // pooled.shape[-1]
        return sum(p.numel() // p.shape[-1] for p in pooled)

    x = inputs
    out: dict[str, int] = {}
    with torch.no_grad():
        if family == "llava":
            out["image"] = rows(model.get_image_features(pixel_values=x["pixel_values"]).pooler_output)
        elif family == "llava_onevision":
            if "pixel_values" in x:
                out["image"] = rows(model.get_image_features(
                    pixel_values=x["pixel_values"], image_sizes=x["image_sizes"],
                    batch_num_images=x.get("batch_num_images")).pooler_output)
            if "pixel_values_videos" in x:
                out["video"] = rows(model.get_video_features(
                    pixel_values_videos=x["pixel_values_videos"]).pooler_output)
        elif family in ("qwen2_vl", "qwen2_5_vl", "qwen2_5_omni_thinker"):
            if "pixel_values" in x:
                out["image"] = rows(model.get_image_features(x["pixel_values"], x["image_grid_thw"]).pooler_output)
            if "pixel_values_videos" in x:
                out["video"] = rows(model.get_video_features(x["pixel_values_videos"],
                                                             x["video_grid_thw"]).pooler_output)
            if "input_features" in x:
                feats = model.get_audio_features(x["input_features"],
                                                 feature_attention_mask=x["feature_attention_mask"])
                out["audio"] = rows(feats.last_hidden_state)
        elif family in ("idefics3", "smolvlm"):
            out["image"] = rows(model.get_image_features(
                x["pixel_values"], pixel_attention_mask=x.get("pixel_attention_mask")).pooler_output)
        elif family == "gemma3":
            out["image"] = rows(model.get_image_features(x["pixel_values"]).pooler_output)
        elif family == "qwen2_audio":
            # No get_audio_features in 5.24: forward runs the tower + projector inline and keeps, per audio, the first
            # audio_output_lengths rows (from feature_attention_mask) of the padded output.
            inner = model.model
            _, lengths = inner.audio_tower._get_feat_extract_output_lengths(x["feature_attention_mask"].sum(-1))
            hidden = inner.multi_modal_projector(inner.audio_tower(x["input_features"]).last_hidden_state)
            assert hidden.shape[1] >= int(lengths.max())
            out["audio"] = int(lengths.sum())
        else:
            raise KeyError(family)
    return out
