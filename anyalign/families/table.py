"""The pretrained multimodal families anyalign loads, one entry each: everything in which they differ.

The rest of ``anyalign/families`` is written once for all of them: the model runs the family's own multimodal
``model.model(...)`` forward (its own towers, projector, placeholder scatter) with anyalign's attention mask and
position ids, and the data workers run the family's own processor. An entry says:

- ``media``: per modality, the processor output keys that belong to it and how they merge across rows
  (``cat0``: concatenate on dim 0, the default; ``cat1``: on dim 1, for one-row image stacks; ``pad1``: pad dim 1
  with zeros to the longest, then concatenate on dim 0);
- ``positions``: ``None`` for plain 1-D positions, or a function giving 3-D rotary positions (M-RoPE) for the rows;
- ``bidirectional``: modalities whose tokens attend each other both ways inside one item (Gemma 3's images);
- ``encoders`` / ``projectors``: attribute paths under ``model.model`` that ``model.freeze`` switches;
- ``call_kwargs``: extra keyword arguments for the processor call, per modality present;
- ``tokenizer``: what builds the data workers' tokenizer, ``(processor, adapters, max_length) -> FamilyTokenizer``,
  when the family renders or processes prompts its own way (``None``: ``FamilyTokenizer``; Qwen2.5-Omni: a
  video's soundtrack inside the video's block, ``omni.py``);
- ``model_class``: the transformers class to load when it is not the checkpoint's own architecture (a full
  Qwen2.5-Omni checkpoint is loaded as its thinker);
- ``generate_kwargs``: ``(hf_model, prompt_ids) -> dict`` of extra arguments one prompt needs in the family's
  ``generate`` (Qwen2.5-Omni: ``use_audio_in_video``); prompts that need different ones are generated apart.

What each family is and does, measured on tiny checkpoints: docs/families.md.
"""
from __future__ import annotations

from .omni import OmniTokenizer, generate_kwargs as omni_generate_kwargs, positions as omni_positions
from .spec import Family, merge, mrope_positions, sampling_rate

__all__ = ["FAMILIES", "Family", "family_of", "merge"]


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llava", ("llava",),
           media={"image": {"pixel_values": "cat0"}},
           encoders=("vision_tower",), projectors=("multi_modal_projector",)),
    Family("llava_onevision", ("llava_onevision",),
           media={"image": {"pixel_values": "pad1", "image_sizes": "cat0", "batch_num_images": "cat0"},
                  "video": {"pixel_values_videos": "cat0"}},
           encoders=("vision_tower",), projectors=("multi_modal_projector",), video_metadata=True),
    Family("qwen2_vl", ("qwen2_vl",),
           media={"image": {"pixel_values": "cat0", "image_grid_thw": "cat0"},
                  "video": {"pixel_values_videos": "cat0", "video_grid_thw": "cat0"}},
           encoders=("visual",), projectors=("visual.merger",), positions=mrope_positions, video_metadata=True),
    Family("qwen2_5_vl", ("qwen2_5_vl",),
           media={"image": {"pixel_values": "cat0", "image_grid_thw": "cat0"},
                  "video": {"pixel_values_videos": "cat0", "video_grid_thw": "cat0", "second_per_grid_ts": "cat0"}},
           encoders=("visual",), projectors=("visual.merger",), positions=mrope_positions, video_metadata=True),
    Family("idefics3", ("idefics3", "smolvlm"),
           media={"image": {"pixel_values": "cat1", "pixel_attention_mask": "cat1"}},
           encoders=("vision_model",), projectors=("connector",), language_model="text_model"),
    Family("gemma3", ("gemma3",),
           media={"image": {"pixel_values": "cat0"}},
           encoders=("vision_tower",), projectors=("multi_modal_projector",), bidirectional=("image",)),
    Family("qwen2_audio", ("qwen2_audio",),
           media={"audio": {"input_features": "cat0", "feature_attention_mask": "cat0"}},
           encoders=("audio_tower",), projectors=("multi_modal_projector",),
           call_kwargs=sampling_rate),
    # a full Qwen2.5-Omni checkpoint (thinker + talker) is loaded as its thinker: text out, the talker left behind
    Family("qwen2_5_omni_thinker", ("qwen2_5_omni_thinker", "qwen2_5_omni"),
           model_class="Qwen2_5OmniThinkerForConditionalGeneration",
           media={"image": {"pixel_values": "cat0", "image_grid_thw": "cat0"},
                  "video": {"pixel_values_videos": "cat0", "video_grid_thw": "cat0", "video_second_per_grid": "cat0"},
                  "audio": {"input_features": "cat0", "feature_attention_mask": "cat0"}},
           encoders=("visual", "audio_tower"), projectors=("visual.merger", "audio_tower.proj"),
           positions=omni_positions, call_kwargs=sampling_rate, tokenizer=OmniTokenizer,
           generate_kwargs=omni_generate_kwargs),
]}


def family_of(model_type: str) -> Family | None:
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)
