"""The nine builders (``BUILDERS``). Each writes the tokenizer, the model, then the processor (which also writes the
tokenizer and the chat template). What each family is and does: docs/families.md."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .saving import save_model, save_processor, video_processor
from .tokens import (
    GEMMA3_TEMPLATE,
    LLAVA_ONEVISION_TEMPLATE,
    LLAVA_TEMPLATE,
    OMNI_TEMPLATE,
    QWEN2_AUDIO_TEMPLATE,
    QWEN_IDS,
    QWEN_VL_TEMPLATE,
    idefics_template,
    token_id,
    write_qwen_tokenizer,
    write_tokenizer,
)

# Shared tiny sizes.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)  # 4x4 = 16 patches per 32 px image


def _build_llava(out: Path) -> None:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaImageProcessorPil,
    )

    specials = ["<s>", "</s>", "<unk>", "<image>", "<pad>"]
    tok, ids, V = write_tokenizer(out, specials, tokenizer_class="TokenizersBackend", bos="<s>", eos="</s>",
                                  pad="<pad>", named={"image_token": "<image>"}, prepend_bos=True,
                                  chat_template=LLAVA_TEMPLATE)
    special_ids = dict(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    text = LlamaConfig(vocab_size=V, **special_ids, **TEXT)
    vision = CLIPVisionConfig(projection_dim=32, **VISION)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                         image_seq_length=16, vision_feature_select_strategy="default", vision_feature_layer=-2,
                         pad_token_id=ids["<pad>"])
    save_model("LlavaForConditionalGeneration", config, out, **special_ids)
    save_processor("LlavaProcessor", out, tokenizer=tok, chat_template=LLAVA_TEMPLATE,
                   image_processor=LlavaImageProcessorPil(size={"shortest_edge": 32},
                                                          crop_size={"height": 32, "width": 32}),
                   processor_kwargs=dict(patch_size=8, vision_feature_select_strategy="default",
                                         num_additional_image_tokens=1))


# ----------------------------------------------------------------------------------------------------------------------
# The Qwen vision families: Qwen2-VL, Qwen2.5-VL and the Omni thinker share the image / video processors and the
# M-RoPE text config; the two VL families also share their tokenizer, token ids and chat template.

QWEN_VL_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_VL_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
QWEN_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}  # every image/frame ends near 56x56 px
QWEN_VIDEO = dict(size=QWEN_SIZE, patch_size=14, temporal_patch_size=2, merge_size=2,
                  cap_pixels_per_frame=True)  # the reference (qwen-vl-utils) behaviour; unset, 5.24 warns per call


def _qwen_mrope(head_dim: int) -> list[int]:
    """mrope_section (temporal, height, width) for a head_dim: sums to head_dim // 2, as 16/24/24 does for 128."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _qwen_mrope_text(vocab: int, **extra) -> dict:
    """The text config of the M-RoPE families: the tiny sizes, Qwen eos / pad, mrope_section for the tiny head_dim."""
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    return dict(vocab_size=vocab, **extra, **QWEN_IDS, **TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": _qwen_mrope(head_dim)})


def _qwen2_5_vision(**extra) -> dict:
    """Qwen2.5-VL's (and the Omni thinker's) vision tower. window_size 56 px = 2x2 merged tokens per window; block 1
    full attention, block 0 windowed (as 7/15/23/31 are)."""
    return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=TEXT["hidden_size"],
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                **extra)


def _qwen_image_video() -> dict:
    """The image and video processors of the Qwen vision families (Qwen2-VL's, at the tiny sizes)."""
    from transformers import Qwen2VLImageProcessorPil

    return dict(image_processor=Qwen2VLImageProcessorPil(size=QWEN_SIZE, patch_size=14, temporal_patch_size=2,
                                                         merge_size=2),
                video_processor=video_processor("Qwen2VLVideoProcessor", **QWEN_VIDEO))


def _build_qwen_vl(out: Path, *, config_class: str, model_class: str, processor_class: str, vision: dict) -> None:
    """Qwen2-VL or Qwen2.5-VL: the classes and the vision tower differ, all else is shared."""
    import transformers

    tok, ids, V = write_qwen_tokenizer(out, QWEN_VL_SPECIALS, named=QWEN_VL_NAMED, chat_template=QWEN_VL_TEMPLATE)
    config = getattr(transformers, config_class)(
        text_config=_qwen_mrope_text(V, bos_token_id=None), vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    save_model(model_class, config, out, **QWEN_IDS)
    save_processor(processor_class, out, tokenizer=tok, chat_template=QWEN_VL_TEMPLATE, **_qwen_image_video())


def _build_qwen2_vl(out: Path) -> None:
    vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], mlp_ratio=2, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    _build_qwen_vl(out, config_class="Qwen2VLConfig", model_class="Qwen2VLForConditionalGeneration",
                   processor_class="Qwen2VLProcessor", vision=vision)


def _build_qwen2_5_vl(out: Path) -> None:
    _build_qwen_vl(out, config_class="Qwen2_5_VLConfig", model_class="Qwen2_5_VLForConditionalGeneration",
                   processor_class="Qwen2_5_VLProcessor", vision=_qwen2_5_vision(tokens_per_second=2))


def _build_llava_onevision(out: Path) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    specials = ["<image>", "<video>"]
    tok, ids, V = write_qwen_tokenizer(out, specials, named={"image_token": "<image>", "video_token": "<video>"},
                                       chat_template=LLAVA_ONEVISION_TEMPLATE)
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    text = Qwen2Config(vocab_size=V, bos_token_id=None, **QWEN_IDS, **TEXT)
    vision = SiglipVisionConfig(vision_use_head=False, **VISION)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                                  video_token_index=ids["<video>"], vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
                                  vision_aspect_ratio="anyres_max_9")
    save_model("LlavaOnevisionForConditionalGeneration", config, out, **QWEN_IDS)
    save_processor("LlavaOnevisionProcessor", out, tokenizer=tok, chat_template=LLAVA_ONEVISION_TEMPLATE,
                   image_processor=LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                                   image_grid_pinpoints=pinpoints),
                   video_processor=video_processor("LlavaOnevisionVideoProcessor", size={"height": 32, "width": 32}),
                   processor_kwargs=dict(num_image_tokens=16, vision_feature_select_strategy="full",
                                         image_token="<image>", video_token="<video>",
                                         vision_aspect_ratio="anyres_max_9"))


# ----------------------------------------------------------------------------------------------------------------------
# Idefics3 and SmolVLM (the same design; SmolVLM adds video and ChatML-style BOS / pad).

IDEFICS_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<fake_token_around_image>", "<image>",
                     "<end_of_utterance>", "<global-img>"]
                    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)])


def _build_idefics_like(out: Path, family: str, specials: list[str], *, bos: str, pad: str,
                        named: dict[str, str] | None = None, pad_in_config: bool = False):
    """Tokenizer, model and image processor of Idefics3 (``family`` "Idefics3") or SmolVLM ("SmolVLM"); returns
    ``(tokenizer, chat_template, image_processor)`` for the caller's processor. ``pad_in_config``: the top-level
    config gets the pad id too (Idefics3)."""
    import transformers

    template = idefics_template(bos)
    tok, ids, V = write_tokenizer(out, specials, tokenizer_class="TokenizersBackend", bos=bos,
                                  eos="<end_of_utterance>", pad=pad, named=named, chat_template=template)
    special_ids = dict(bos_token_id=token_id(tok, bos), eos_token_id=ids["<end_of_utterance>"],
                       pad_token_id=token_id(tok, pad))
    text = transformers.LlamaConfig(vocab_size=V, **special_ids, **TEXT)
    vision = dict(VISION, hidden_act="gelu_pytorch_tanh")
    extra = {"pad_token_id": special_ids["pad_token_id"]} if pad_in_config else {}
    config = getattr(transformers, f"{family}Config")(vision_config=vision, text_config=text,
                                                      image_token_id=ids["<image>"], scale_factor=2, **extra)
    save_model(f"{family}ForConditionalGeneration", config, out, **special_ids)
    # Images resized to a 64 px longest edge, split into 32 px tiles (the vision tower's size) plus the global image.
    image_processor = getattr(transformers, f"{family}ImageProcessorPil")(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True)
    return tok, template, image_processor


def _build_idefics3(out: Path) -> None:
    tok, template, image_processor = _build_idefics_like(out, "Idefics3", IDEFICS_SPECIALS, bos="<|begin_of_text|>",
                                                         pad="<|end_of_text|>", pad_in_config=True)
    save_processor("Idefics3Processor", out, tokenizer=tok, chat_template=template, image_processor=image_processor,
                   processor_kwargs=dict(image_seq_len=4))


def _build_smolvlm(out: Path) -> None:
    tok, template, image_processor = _build_idefics_like(
        out, "SmolVLM", IDEFICS_SPECIALS + ["<video>"], bos="<|im_start|>", pad="<|im_end|>",
        named={"image_token": "<image>", "video_token": "<video>", "fake_image_token": "<fake_token_around_image>",
               "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    video = video_processor("SmolVLMVideoProcessor", size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                            do_image_splitting=False, fps=1, num_frames=4)
    save_processor("SmolVLMProcessor", out, tokenizer=tok, chat_template=template, image_processor=image_processor,
                   video_processor=video, processor_kwargs=dict(image_seq_len=4))


def _build_gemma3(out: Path) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ImageProcessorPil,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tok, ids, V = write_tokenizer(out, specials, tokenizer_class="TokenizersBackend", bos="<bos>", eos="<eos>",
                                  pad="<pad>", named={"image_token": "<image_soft_token>",
                                                      "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
                                  chat_template=GEMMA3_TEMPLATE)
    special_ids = dict(pad_token_id=ids["<pad>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                       bos_token_id=ids["<bos>"])
    # Layer 0 sliding (window 8 tokens), layer 1 full: the 5:1 local/global pattern of Gemma 3 in two layers.
    text = Gemma3TextConfig(vocab_size=V, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"], **special_ids, **TEXT)
    vision = SiglipVisionConfig(vision_use_head=False, **VISION)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"])
    save_model("Gemma3ForConditionalGeneration", config, out, **special_ids)
    save_processor("Gemma3Processor", out, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                   image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False),
                   processor_kwargs=dict(image_seq_length=4))


# ----------------------------------------------------------------------------------------------------------------------
# The audio families: Qwen2-Audio and the Omni thinker share the audio encoder's sizes and the feature extractor.

AUDIO_ENCODER = dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32)


def _whisper_features():
    """16 mel bins, features padded to chunk_length = 2 s = 200 mel frames."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=16, chunk_length=2, sampling_rate=16000, hop_length=160, n_fft=400,
                                   padding_value=0.0, return_attention_mask=True)


def _build_qwen2_audio(out: Path) -> None:
    from transformers import Qwen2AudioConfig, Qwen2Config

    specials = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    tok, ids, V = write_qwen_tokenizer(out, specials,
                                       named={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                                              "audio_eos_token": "<|audio_eos|>"},
                                       chat_template=QWEN2_AUDIO_TEMPLATE)
    text = Qwen2Config(vocab_size=V, bos_token_id=None, **QWEN_IDS, **TEXT)
    # Features padded to chunk_length = 2 s = 200 mel frames; conv2 (stride 2) -> max_source_positions 100.
    audio = dict(AUDIO_ENCODER, max_source_positions=100)
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"])
    save_model("Qwen2AudioForConditionalGeneration", config, out, **QWEN_IDS)
    save_processor("Qwen2AudioProcessor", out, tokenizer=tok, chat_template=QWEN2_AUDIO_TEMPLATE,
                   feature_extractor=_whisper_features())


OMNI_SPECIALS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>",
                 "<|VIDEO|>"]


def _build_qwen2_5_omni_thinker(out: Path) -> None:
    from transformers import Qwen2_5OmniThinkerConfig

    tok, ids, V = write_qwen_tokenizer(out, OMNI_SPECIALS,
                                       named={"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>",
                                              "video_token": "<|VIDEO|>",
                                              "vision_bos_token": "<|vision_bos|>",
                                              "vision_eos_token": "<|vision_eos|>",
                                              "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
                                       chat_template=OMNI_TEMPLATE)
    # Chunks of 2 * n_window = 100 mel frames (1 s); conv2 halves them, so max_source_positions 50 suffices.
    audio = dict(AUDIO_ENCODER, max_source_positions=50, n_window=50, output_dim=TEXT["hidden_size"])
    user_id = tok.encode("user", add_special_tokens=False)
    config = Qwen2_5OmniThinkerConfig(
        text_config=_qwen_mrope_text(V), vision_config=_qwen2_5_vision(), audio_config=audio,
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=user_id[0], position_id_per_seconds=25, seconds_per_chunk=2)
    save_model("Qwen2_5OmniThinkerForConditionalGeneration", config, out, **QWEN_IDS)
    save_processor("Qwen2_5OmniProcessor", out, tokenizer=tok, chat_template=OMNI_TEMPLATE, **_qwen_image_video(),
                   feature_extractor=_whisper_features())


BUILDERS: dict[str, Callable[[Path], None]] = {
    "llava": _build_llava,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "llava_onevision": _build_llava_onevision,
    "idefics3": _build_idefics3,
    "smolvlm": _build_smolvlm,
    "gemma3": _build_gemma3,
    "qwen2_audio": _build_qwen2_audio,
    "qwen2_5_omni_thinker": _build_qwen2_5_omni_thinker,
}
