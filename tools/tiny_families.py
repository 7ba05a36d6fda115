"""Tiny random checkpoints of the multimodal families transformers ships, built locally for tests.

    python tools/tiny_families.py FAMILY OUT_DIR      # one family
    python tools/tiny_families.py --all OUT_ROOT      # every family, each in OUT_ROOT/FAMILY
    python tools/tiny_families.py --list              # the family names

``build(family, out_dir) -> Path`` writes a directory that the family class (or
``AutoModelForImageTextToText`` where transformers maps it) and ``AutoProcessor`` load with no missing or
unexpected keys: the family's real config classes at tiny sizes, random weights (seed 0) in safetensors, and the
family's real processor class with its real image processor / video processor / feature extractor classes, a
tokenizer built from ``assets/tiny-lm/tokenizer.json`` (a byte-level BPE, 512 ids) plus the family's special tokens
(appended from id 512 on, the config's token ids set to match), and a chat template in the family's style. Nothing
is downloaded. Nothing built here is committed: tests build into a tmp dir (tests/test_tiny_families.py).

TABLE (transformers 5.24.0, measured on the 2-core CPU dev machine). "placeholders" = placeholder ids in
``input_ids`` for the sample inputs of tests/test_tiny_families.py; in every case equal to the rows the family's feature
function returns (the test checks it).

Sample inputs: one RGB image 40x48 (h x w), one video of 4 frames 32x32, 1 s of 16 kHz noise; one user turn
"<media> Describe it." rendered by the family's chat template with add_generation_prompt=True.

family          | model class (Auto*)                      | placeholders (id): sample count    | build cold/warm, size
----------------+------------------------------------------+------------------------------------+----------------------
llava           | LlavaForConditionalGeneration (ITT)      | <image> 515: image 16 (seq 38)     | 4.5/0.05 s, 728 KiB
qwen2_vl        | Qwen2VLForConditionalGeneration (ITT)    | <|image_pad|> 514, <|video_pad|>   | 3.9/0.05 s, 921 KiB
                |                                          |  515: image 6 + video 8 (seq 55)   |
qwen2_5_vl      | Qwen2_5_VLForConditionalGeneration (ITT) | same ids: image 6 + video 8 (55)   | 3.8/0.05 s, 937 KiB
llava_onevision | LlavaOnevisionForConditionalGeneration   | <image> 512, <video> 513:          | 3.9/0.06 s, 730 KiB
                |  (ITT)                                   |  image 70 + video 17 (seq 104)     |
idefics3        | Idefics3ForConditionalGeneration (ITT)   | <image> 515: image 20 (seq 50)     | 3.7/0.05 s, 741 KiB
smolvlm         | SmolVLMForConditionalGeneration (ITT)    | <image> 515: image 20 (seq 50);    | 3.8/0.05 s, 742 KiB
                |                                          |  video -> 16 <image> (seq 160)     |
gemma3          | Gemma3ForConditionalGeneration (ITT)     | <image_soft_token> 519: image 4    | 3.8/0.05 s, 570 KiB
                |                                          |  (seq 27)                          |
qwen2_audio     | Qwen2AudioForConditionalGeneration (MLM) | <|AUDIO|> 512: audio 25 (seq 74)   | 3.8/0.05 s, 716 KiB
qwen2_5_omni_   | Qwen2_5OmniThinkerForConditionalGenera-  | <|AUDIO|> 512, <|IMAGE|> 517,      | 3.9/0.3 s, 1037 KiB
 thinker        |  tion (ITT)                              |  <|VIDEO|> 518: image 6 + video 8  |
                |                                          |  + audio 25 (seq 168)              |
(ITT = AutoModelForImageTextToText, MLM = AutoModelForMultimodalLM, which loads all nine. Cold = a fresh
``python tools/tiny_families.py FAMILY DIR``, ~3.7 s of it importing torch + transformers; warm = in a process that
already built one. Load + processor + forward + 3-token generate: under 3 s per family on CPU.)

family           | feature function (on the *ForConditionalGeneration; inputs) -> what comes back
-----------------+------------------------------------------------------------------------------------------------
llava            | get_image_features(pixel_values (N,3,32,32), vision_feature_layer=None -> config -2,
                 |   vision_feature_select_strategy=None -> config "default") -> BaseModelOutputWithPooling whose
                 |   .pooler_output is a list of N tensors (16, D): (32/8)^2 patches + CLS, CLS dropped by "default".
llava_onevision  | get_image_features(pixel_values (N, tiles, 3, 32, 32), image_sizes (N,2), batch_num_images (B,))
                 |   -> .pooler_output list of N (n_i, D): anyres tiles (pinpoints 32/64 px), unpadded, one
                 |   image_newline row per feature row, + the 4x4 base tile (70 for a 40x48 image); a sample with
                 |   several images gets no anyres (16 + 1 each).
                 | get_video_features(pixel_values_videos (B, F, 3, 32, 32)) -> .pooler_output TENSOR
                 |   (B, F*2*2 + 1, D): each frame's 4x4 grid bilinear-pooled to 2x2, one image_newline row at the
                 |   end (17 for 4 frames).
qwen2_vl,        | get_image_features(pixel_values (sum patches, 3*2*14*14), image_grid_thw (N,3)) and
qwen2_5_vl       | get_video_features(pixel_values_videos, video_grid_thw (V,3)) -> .pooler_output TUPLE of per-item
                 |   (t*h*w/4, D) (2x2 spatial merge; t = frames/2). Images are smart-resized to multiples of 28 px
                 |   (the min_pixels branch may overshoot max_pixels): 40x48 -> 56x84 -> grid (1,4,6) -> 6 tokens;
                 |   4 frames 32x32 -> 56x56 -> grid (2,4,4) -> 8. Qwen2.5-VL's vision tower uses window attention
                 |   (window_size px) except in fullatt_block_indexes.
idefics3,        | get_image_features(pixel_values (B, n_img, 3, 32, 32), pixel_attention_mask (B, n_img, 32, 32))
smolvlm          |   -> .pooler_output list of B tensors (n_real_img * image_seq_len, D); all-zero (padding) images
                 |   are dropped; image_seq_len = (32/8)^2 / scale_factor^2 = 4. Text per image: per tile
                 |   "<fake_token_around_image><row_r_col_c>" + <image>*4, a newline after each row, then newline +
                 |   "<fake_token_around_image><global-img>" + <image>*4 + "<fake_token_around_image>" (40x48 ->
                 |   longest edge 64 -> 2x2 tiles of 32 + global = 20). SmolVLM video: the processor turns frames
                 |   into images (same pixel_values key, image_token_id placeholders, a "You are provided the
                 |   following series of four frames..." intro and "Frame from MM:SS:" lines; 4 frames -> 16
                 |   <image>) and, for a conversation with a video, uses its own DEFAULT_CHAT_TEMPLATE, not the
                 |   checkpoint's.
gemma3           | get_image_features(pixel_values (N,3,32,32)) -> .pooler_output TENSOR (N, mm_tokens_per_image=4, D)
                 |   (4x4 patches avg-pooled to 2x2). The processor replaces "<start_of_image>" in the text by
                 |   two newlines + "<start_of_image>" + "<image_soft_token>"*4 + "<end_of_image>" + two newlines,
                 |   and returns token_type_ids.
qwen2_audio      | NONE in 5.24 (no get_audio_features, no mm_encoder_outputs): forward runs model.model.audio_tower(
                 |   input_features (B, 16 mel, 200)).last_hidden_state (B, 50, d) -> model.model.multi_modal_projector,
                 |   keeping per audio the first audio_tower._get_feat_extract_output_lengths(feature_attention_mask
                 |   .sum(-1))[1] rows: ((L-1)//2+1 - 2)//2 + 1 for L mel frames (1 s = 100 frames -> 25). The encoder
                 |   rejects mel input not exactly 2*max_source_positions long (processor always pads to chunk_length:
                 |   30 s in the real model, 2 s here). Placeholders not consecutive -> legacy merge path.
qwen2_5_omni_    | get_image_features / get_video_features as Qwen2.5-VL; get_audio_features(input_features (B, mel,
  thinker        |   T_pad), feature_attention_mask (B, T_pad)) -> BaseModelOutputWithPooling, last_hidden_state
                 |   (sum of tokens over all audios, D): no batch dim; encoder runs chunks of 2*n_window frames.
(Every get_*_features accepts return_dict; forward of all but Qwen2-Audio also takes precomputed
``mm_encoder_outputs={"image": BaseModelOutputWithPooling, ...}`` instead of pixels. In 5.24 the cache argument is
``cache=`` (``past_key_values`` deprecated). Each model checks placeholder count == feature rows and raises otherwise.)

family           | positions                                       | text attention quirks
-----------------+-------------------------------------------------+-------------------------------------------------
llava, onevision,| 1-D (position_ids = arange; none needed)        | causal, all layers full attention (no
idefics3, smolvlm|                                                 | layer_types / sliding window)
qwen2_audio      |                                                 |
qwen2_vl         | 3-D M-RoPE (3, B, L): model.model.get_rope_index(| causal; layer_types all full_attention
                 |   input_ids, mm_token_type_ids, image_grid_thw, | (use_sliding_window False, as in the real
                 |   video_grid_thw, attention_mask) -> (position_ | checkpoints); vision tower attends within each
                 |   ids, rope_deltas (B,1)); mm_token_type_ids (0 | image/frame group only (cu_seqlens)
                 |   text, 1 image, 2 video) come from the         |
                 |   processor; forward raises ValueError if grids |
                 |   come without them. Video temporal id = t index|
qwen2_5_vl       | as Qwen2-VL plus second_per_grid_ts: temporal   | as Qwen2-VL
                 |   id = t * second_per_grid_ts *                 |
                 |   tokens_per_second; frames without metadata    |
                 |   count as 24 fps (0.083 s per grid: the sample's
                 |   two frame groups share a temporal id). WITHOUT|
                 |   mm_token_type_ids it silently runs 1-D.       |
qwen2_5_omni_    | 3-D M-RoPE from get_rope_index(input_ids,       | causal, full attention
  thinker        |   image_grid_thw, video_grid_thw, attention_mask,|
                 |   use_audio_in_video, audio_seqlens,            |
                 |   second_per_grids) keyed on vision_start /     |
                 |   audio_start token ids (no mm_token_type_ids;  |
                 |   forward computes it only when attention_mask  |
                 |   is given); audio at position_id_per_seconds=25|
                 |   per s, video t at video_second_per_grid * 25  |
gemma3           | 1-D                                             | layer_types: sliding_attention / full_attention
                 |                                                 | (5:1, window 1024 in the real 4B; here [sliding
                 |                                                 | window 8, full]); per-type rope_parameters
                 |                                                 | (10k local, 1M global). BIDIRECTIONAL inside each
                 |                                                 | image block when token_type_ids (processor
                 |                                                 | output, 1 on <image_soft_token>) reach forward:
                 |                                                 | OR(causal, same block), ANDed with the window in
                 |                                                 | sliding layers; without them (e.g. an
                 |                                                 | inputs_embeds-only forward) plain causal, other
                 |                                                 | logits. Embeddings scaled by sqrt(hidden) inside
                 |                                                 | get_input_embeddings().

M-RoPE state (compute_3d_position_ids): model.model.rope_deltas is cached by each forward that computes positions
and reused by any later forward with a cache or with inputs_embeds only: after one forward of the Qwen2-VL sample
(delta -9) an inputs_embeds-only forward of 10 tokens gets positions -9..0. Training code that feeds inputs_embeds
must pass position_ids (from get_rope_index) itself.

Processors: all save into one processor_config.json (the 5.x layout). Video processors are torchvision-only in 5.x
(BaseVideoProcessor requires torchvision, no PIL variant), so Qwen2VLProcessor, Qwen2_5_VLProcessor,
LlavaOnevisionProcessor, SmolVLMProcessor and Qwen2_5OmniProcessor cannot be instantiated without torchvision, which
this project does not depend on (torchvision 0.29.1 matches torch 2.14.1); SmolVLMProcessor also imports num2words.
Without them the directories are still written (the video processor's config by hand, in the same layout) and load
identically once they are installed (checked: same processor outputs, same weights); the tests skip the processor
part with that reason and still check the model. Image processors have PIL variants (chosen automatically).
Qwen2_5OmniProcessor.videos_kwargs forces size {"shortest_edge": 128*28*28, ...} over its video processor's own
config (pass videos_kwargs={"size": ...} to keep small frames) and assumes fps 2.0 for video_second_per_grid.
The Omni directory is the thinker only (model_type qwen2_5_omni_thinker); Qwen2_5OmniThinkerConfig declares no
vision_start_token_id, yet get_rope_index reads it: it is passed as an extra key (kept by the config, saved).
Gemma 3's template emits {{ bos_token }} and its tokenizer adds none (no double BOS); LLaVA's tokenizer prepends <s>
(template has none), as llava-hf's do; Idefics3/SmolVLM templates begin with the BOS text.

No family failed to build.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_TOKENIZER = ROOT / "assets" / "tiny-lm" / "tokenizer.json"
BASE_VOCAB = 512  # ids 0..511 in assets/tiny-lm; 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>
SEED = 0

# Shared tiny sizes.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)  # 4x4 = 16 patches per 32 px image


# ----------------------------------------------------------------------------------------------------------------------
# Family metadata: what a test (or the next engineer) needs to drive each family.

@dataclass(frozen=True)
class Family:
    name: str
    model_class: str                 # transformers class the directory is saved from
    auto_class: str                  # the AutoModelFor... class that loads it (AutoModelForMultimodalLM loads all nine)
    processor_class: str             # what AutoProcessor returns
    modalities: tuple[str, ...]      # what the sample conversation carries
    requires: tuple[str, ...] = ()   # importable modules the *processor* needs beyond this project's dependencies
    notes: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llava", "LlavaForConditionalGeneration", "AutoModelForImageTextToText", "LlavaProcessor", ("image",)),
    Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "AutoModelForImageTextToText", "Qwen2VLProcessor",
           ("image", "video"),
           requires=("torchvision",)),
    Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "AutoModelForImageTextToText", "Qwen2_5_VLProcessor",
           ("image", "video"),
           requires=("torchvision",)),
    Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", "AutoModelForImageTextToText",
           "LlavaOnevisionProcessor", ("image", "video"), requires=("torchvision",)),
    Family("idefics3", "Idefics3ForConditionalGeneration", "AutoModelForImageTextToText", "Idefics3Processor",
           ("image",)),
    Family("smolvlm", "SmolVLMForConditionalGeneration", "AutoModelForImageTextToText", "SmolVLMProcessor",
           ("image", "video"),
           requires=("torchvision", "num2words")),
    Family("gemma3", "Gemma3ForConditionalGeneration", "AutoModelForImageTextToText", "Gemma3Processor", ("image",)),
    Family("qwen2_audio", "Qwen2AudioForConditionalGeneration", "AutoModelForMultimodalLM", "Qwen2AudioProcessor",
           ("audio",)),
    Family("qwen2_5_omni_thinker", "Qwen2_5OmniThinkerForConditionalGeneration", "AutoModelForImageTextToText",
           "Qwen2_5OmniProcessor", ("image", "video", "audio"),
           requires=("torchvision",)),
]}


def missing_requirements(family: str) -> list[str]:
    """Modules the family's processor needs that are not importable here (the model itself never needs them)."""
    return [m for m in FAMILIES[family].requires if importlib.util.find_spec(m) is None]


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer: the repo's tiny byte-level BPE plus the family's special tokens.

def _vocab_size(n_specials: int) -> int:
    return int(math.ceil((BASE_VOCAB + n_specials) / 64) * 64)


def _write_tokenizer(out: Path, specials: list[str], *, tokenizer_class: str, eos: str, pad: str,
                     bos: str | None = None, named: dict[str, str] | None = None, prepend_bos: bool = False,
                     chat_template: str | None = None):
    """Append ``specials`` (ids 512, 513, ... in order) and write tokenizer.json + tokenizer_config.json.

    ``named`` becomes the tokenizer's named multimodal tokens (``tokenizer.image_token`` and ``..._id``), which the
    processors read; ``prepend_bos`` makes the tokenizer add ``bos`` in front of every encoding (Llama style)."""
    from tokenizers import AddedToken, Tokenizer, processors

    tok = Tokenizer.from_file(str(BASE_TOKENIZER))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    ids = {s: tok.token_to_id(s) for s in specials}
    assert list(ids.values()) == list(range(BASE_VOCAB, BASE_VOCAB + len(specials))), ids
    if prepend_bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": tokenizer_class, "backend": "tokenizers", "eos_token": eos, "pad_token": pad,
           "bos_token": bos, "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    if named:
        cfg["extra_special_tokens"] = dict(named)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer, ids


def _token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


# ----------------------------------------------------------------------------------------------------------------------
# Chat templates, each in its family's style (the official checkpoints' templates, trimmed of tool calling).

QWEN_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _idefics_template(bos: str) -> str:
    return (
        bos + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
        "{% if message['content'][0]['type'] in ('image', 'video') %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
        "{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = (messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text']) + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

QWEN2_AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
               "auditory and visual inputs, as well as generating text and speech.")
OMNI_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + OMNI_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ----------------------------------------------------------------------------------------------------------------------
# Saving.

def _save_model(model_class: str, config, out: Path, *, eos_token_id, pad_token_id, bos_token_id=None) -> None:
    import torch
    import transformers

    torch.manual_seed(SEED)
    model = getattr(transformers, model_class)(config).eval()
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos_token_id, pad_token_id, bos_token_id
    gen.do_sample = False
    model.save_pretrained(str(out))  # safetensors


def _qwen_mrope(head_dim: int) -> list[int]:
    """mrope_section (temporal, height, width) for a head_dim: sums to head_dim // 2, as 16/24/24 does for 128."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


# ----------------------------------------------------------------------------------------------------------------------
# Builders. Each writes the model, then the processor (which also writes the tokenizer and chat template).

def _build_llava(out: Path) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaImageProcessorPil, LlavaProcessor

    specials = ["<s>", "</s>", "<unk>", "<image>", "<pad>"]
    tok, ids = _write_tokenizer(out, specials, tokenizer_class="TokenizersBackend", bos="<s>", eos="</s>",
                                pad="<pad>", named={"image_token": "<image>"}, prepend_bos=True,
                                chat_template=LLAVA_TEMPLATE)
    V = _vocab_size(len(specials))
    text = LlamaConfig(vocab_size=V, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
                       **TEXT)
    vision = CLIPVisionConfig(projection_dim=32, **VISION)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                         image_seq_length=16, vision_feature_select_strategy="default", vision_feature_layer=-2,
                         pad_token_id=ids["<pad>"])
    _save_model("LlavaForConditionalGeneration", config, out, eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
                bos_token_id=ids["<s>"])
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_TEMPLATE).save_pretrained(str(out))


QWEN_VL_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_VL_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}


def _video_processor(class_name: str, **kwargs):
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


def _save_processor(processor_class: str, out: Path, *, processor_kwargs: dict | None = None, **parts) -> None:
    import transformers
    video = parts.get("video_processor")
    if isinstance(video, _VideoProcessorConfig):
        parts = dict(parts)
        parts.pop("video_processor")
        _save_processor_without_video(processor_class, out, video, processor_kwargs=processor_kwargs or {}, **parts)
        return
    getattr(transformers, processor_class)(**parts, **(processor_kwargs or {})).save_pretrained(str(out))


QWEN_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}  # every image/frame ends near 56x56 px
QWEN_VIDEO = dict(size=QWEN_SIZE, patch_size=14, temporal_patch_size=2, merge_size=2,
                  cap_pixels_per_frame=True)  # the reference (qwen-vl-utils) behaviour; unset, 5.24 warns per call


def _build_qwen2_vl(out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessorPil

    tok, ids = _write_tokenizer(out, QWEN_VL_SPECIALS, tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>",
                                pad="<|endoftext|>", named=QWEN_VL_NAMED, chat_template=QWEN_VL_TEMPLATE)
    V = _vocab_size(len(QWEN_VL_SPECIALS))
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = dict(vocab_size=V, bos_token_id=None, eos_token_id=2, pad_token_id=0, **TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": _qwen_mrope(head_dim)})
    vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], mlp_ratio=2, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    _save_model("Qwen2VLForConditionalGeneration", config, out, eos_token_id=2, pad_token_id=0)
    _save_processor("Qwen2VLProcessor", out, tokenizer=tok, chat_template=QWEN_VL_TEMPLATE,
                    image_processor=Qwen2VLImageProcessorPil(size=QWEN_SIZE, patch_size=14, temporal_patch_size=2,
                                                             merge_size=2),
                    video_processor=_video_processor("Qwen2VLVideoProcessor", **QWEN_VIDEO))


def _build_qwen2_5_vl(out: Path) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

    tok, ids = _write_tokenizer(out, QWEN_VL_SPECIALS, tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>",
                                pad="<|endoftext|>", named=QWEN_VL_NAMED, chat_template=QWEN_VL_TEMPLATE)
    V = _vocab_size(len(QWEN_VL_SPECIALS))
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = dict(vocab_size=V, bos_token_id=None, eos_token_id=2, pad_token_id=0, **TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": _qwen_mrope(head_dim)})
    # window_size 56 px = 2x2 merged tokens per window; block 1 full attention, block 0 windowed (as 7/15/23/31 are).
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=TEXT["hidden_size"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    _save_model("Qwen2_5_VLForConditionalGeneration", config, out, eos_token_id=2, pad_token_id=0)
    _save_processor("Qwen2_5_VLProcessor", out, tokenizer=tok, chat_template=QWEN_VL_TEMPLATE,
                    image_processor=Qwen2VLImageProcessorPil(size=QWEN_SIZE, patch_size=14, temporal_patch_size=2,
                                                             merge_size=2),
                    video_processor=_video_processor("Qwen2VLVideoProcessor", **QWEN_VIDEO))


def _build_llava_onevision(out: Path) -> None:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil, Qwen2Config, SiglipVisionConfig

    specials = ["<image>", "<video>"]
    tok, ids = _write_tokenizer(out, specials, tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>", pad="<|endoftext|>",
                                named={"image_token": "<image>", "video_token": "<video>"},
                                chat_template=LLAVA_ONEVISION_TEMPLATE)
    V = _vocab_size(len(specials))
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    text = Qwen2Config(vocab_size=V, bos_token_id=None, eos_token_id=2, pad_token_id=0, **TEXT)
    vision = SiglipVisionConfig(vision_use_head=False, **VISION)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                                  video_token_index=ids["<video>"], vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
                                  vision_aspect_ratio="anyres_max_9")
    _save_model("LlavaOnevisionForConditionalGeneration", config, out, eos_token_id=2, pad_token_id=0)
    _save_processor("LlavaOnevisionProcessor", out, tokenizer=tok, chat_template=LLAVA_ONEVISION_TEMPLATE,
                    image_processor=LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                                    image_grid_pinpoints=pinpoints),
                    video_processor=_video_processor("LlavaOnevisionVideoProcessor", size={"height": 32, "width": 32}),
                    processor_kwargs=dict(num_image_tokens=16, vision_feature_select_strategy="full",
                                          image_token="<image>", video_token="<video>",
                                          vision_aspect_ratio="anyres_max_9"))


IDEFICS_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<fake_token_around_image>", "<image>",
                     "<end_of_utterance>", "<global-img>"]
                    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)])


def _build_idefics3(out: Path) -> None:
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor, LlamaConfig

    template = _idefics_template("<|begin_of_text|>")
    tok, ids = _write_tokenizer(out, IDEFICS_SPECIALS, tokenizer_class="TokenizersBackend", bos="<|begin_of_text|>",
                                eos="<end_of_utterance>", pad="<|end_of_text|>", chat_template=template)
    V = _vocab_size(len(IDEFICS_SPECIALS))
    text = LlamaConfig(vocab_size=V, bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<end_of_utterance>"],
                       pad_token_id=ids["<|end_of_text|>"], **TEXT)
    vision = dict(VISION, hidden_act="gelu_pytorch_tanh")
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=ids["<image>"], scale_factor=2,
                            pad_token_id=ids["<|end_of_text|>"])
    _save_model("Idefics3ForConditionalGeneration", config, out, eos_token_id=ids["<end_of_utterance>"],
                pad_token_id=ids["<|end_of_text|>"], bos_token_id=ids["<|begin_of_text|>"])
    # Images resized to a 64 px longest edge, split into 32 px tiles (the vision tower's size) plus the global image.
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                                do_image_splitting=True)
    Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                      chat_template=template).save_pretrained(str(out))


def _build_smolvlm(out: Path) -> None:
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMImageProcessorPil

    specials = IDEFICS_SPECIALS + ["<video>"]
    template = _idefics_template("<|im_start|>")
    tok, ids = _write_tokenizer(out, specials, tokenizer_class="TokenizersBackend", bos="<|im_start|>",
                                eos="<end_of_utterance>", pad="<|im_end|>",
                                named={"image_token": "<image>", "video_token": "<video>",
                                       "fake_image_token": "<fake_token_around_image>",
                                       "global_image_token": "<global-img>",
                                       "end_of_utterance_token": "<end_of_utterance>"},
                                chat_template=template)
    V = _vocab_size(len(specials))
    text = LlamaConfig(vocab_size=V, bos_token_id=1, eos_token_id=ids["<end_of_utterance>"], pad_token_id=2, **TEXT)
    vision = dict(VISION, hidden_act="gelu_pytorch_tanh")
    config = SmolVLMConfig(vision_config=vision, text_config=text, image_token_id=ids["<image>"], scale_factor=2)
    _save_model("SmolVLMForConditionalGeneration", config, out, eos_token_id=ids["<end_of_utterance>"], pad_token_id=2,
                bos_token_id=1)
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                               do_image_splitting=True)
    video = _video_processor("SmolVLMVideoProcessor", size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                             do_image_splitting=False, fps=1, num_frames=4)
    _save_processor("SmolVLMProcessor", out, tokenizer=tok, chat_template=template, image_processor=image_processor,
                    video_processor=video, processor_kwargs=dict(image_seq_len=4))


def _build_gemma3(out: Path) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tok, ids = _write_tokenizer(out, specials, tokenizer_class="TokenizersBackend", bos="<bos>", eos="<eos>",
                                pad="<pad>", named={"image_token": "<image_soft_token>",
                                                    "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
                                chat_template=GEMMA3_TEMPLATE)
    V = _vocab_size(len(specials))
    # Layer 0 sliding (window 8 tokens), layer 1 full: the 5:1 local/global pattern of Gemma 3 in two layers.
    text = Gemma3TextConfig(vocab_size=V, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"], pad_token_id=ids["<pad>"],
                            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], bos_token_id=ids["<bos>"], **TEXT)
    vision = SiglipVisionConfig(vision_use_head=False, **VISION)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"])
    _save_model("Gemma3ForConditionalGeneration", config, out, eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"])
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                    chat_template=GEMMA3_TEMPLATE).save_pretrained(str(out))


AUDIO_FE = dict(sampling_rate=16000, hop_length=160, n_fft=400, padding_value=0.0, return_attention_mask=True)


def _build_qwen2_audio(out: Path) -> None:
    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor, Qwen2Config, WhisperFeatureExtractor

    specials = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    tok, ids = _write_tokenizer(out, specials, tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>", pad="<|endoftext|>",
                                named={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                                       "audio_eos_token": "<|audio_eos|>"},
                                chat_template=QWEN2_AUDIO_TEMPLATE)
    V = _vocab_size(len(specials))
    text = Qwen2Config(vocab_size=V, bos_token_id=None, eos_token_id=2, pad_token_id=0, **TEXT)
    # Features padded to chunk_length = 2 s = 200 mel frames; conv2 (stride 2) -> max_source_positions 100.
    audio = dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32,
                 max_source_positions=100)
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"])
    _save_model("Qwen2AudioForConditionalGeneration", config, out, eos_token_id=2, pad_token_id=0)
    fe = WhisperFeatureExtractor(feature_size=16, chunk_length=2, **AUDIO_FE)
    Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok,
                        chat_template=QWEN2_AUDIO_TEMPLATE).save_pretrained(str(out))


OMNI_SPECIALS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>",
                 "<|VIDEO|>"]


def _build_qwen2_5_omni_thinker(out: Path) -> None:
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    tok, ids = _write_tokenizer(out, OMNI_SPECIALS, tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>",
                                pad="<|endoftext|>",
                                named={"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>",
                                       "video_token": "<|VIDEO|>",
                                       "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                                       "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
                                chat_template=OMNI_TEMPLATE)
    V = _vocab_size(len(OMNI_SPECIALS))
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = dict(vocab_size=V, eos_token_id=2, pad_token_id=0, **TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": _qwen_mrope(head_dim)})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=TEXT["hidden_size"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    # Chunks of 2 * n_window = 100 mel frames (1 s); conv2 halves them, so max_source_positions 50 suffices.
    audio = dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32,
                 max_source_positions=50, n_window=50, output_dim=TEXT["hidden_size"])
    user_id = tok.encode("user", add_special_tokens=False)
    config = Qwen2_5OmniThinkerConfig(
        text_config=text, vision_config=vision, audio_config=audio, audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=user_id[0], position_id_per_seconds=25, seconds_per_chunk=2)
    _save_model("Qwen2_5OmniThinkerForConditionalGeneration", config, out, eos_token_id=2, pad_token_id=0)
    _save_processor("Qwen2_5OmniProcessor", out, tokenizer=tok, chat_template=OMNI_TEMPLATE,
                    image_processor=Qwen2VLImageProcessorPil(size=QWEN_SIZE, patch_size=14, temporal_patch_size=2,
                                                             merge_size=2),
                    video_processor=_video_processor("Qwen2VLVideoProcessor", **QWEN_VIDEO),
                    feature_extractor=WhisperFeatureExtractor(feature_size=16, chunk_length=2, **AUDIO_FE))


# ----------------------------------------------------------------------------------------------------------------------
# Placeholders and features: how many placeholder ids the processor wrote, and how many rows the family's own feature
# function returns for the same inputs (the model scatters one row per placeholder; both must agree).

def placeholder_counts(model, input_ids) -> dict[str, int]:
    cfg = model.config
    counts = {}
    for modality in ("image", "video", "audio"):
        token_id = getattr(cfg, f"{modality}_token_id", None)
        if token_id is not None:
            counts[modality] = int((input_ids == token_id).sum())
    return {k: v for k, v in counts.items() if v}


def feature_counts(family: str, model, inputs) -> dict[str, int]:
    """Rows of features per modality, from the family's feature function (see the table) on processor outputs."""
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
assert BUILDERS.keys() == FAMILIES.keys()


MARKER = "tiny_family.json"  # written into every built directory; only such a directory is ever emptied


def build(family: str, out_dir) -> Path:
    """Write the tiny ``family`` checkpoint + processor into ``out_dir`` and return its path.

    ``out_dir`` must be missing, empty, or an earlier build (it has ``tiny_family.json``), which is replaced."""
    if family not in BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(BUILDERS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} is not empty and not an earlier tiny_families build; not touching it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        BUILDERS[family](out)
    finally:
        transformers.logging.set_verbosity(verbosity)
    (out / MARKER).write_text(json.dumps({"family": family, "seed": SEED, "transformers": transformers.__version__,
                                          "built_by": "tools/tiny_families.py"}, indent=2) + "\n")
    return out


def dir_size(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", nargs="?", help=f"one of: {', '.join(BUILDERS)}")
    ap.add_argument("out", nargs="?", help="output directory")
    ap.add_argument("--all", metavar="OUT_ROOT", help="build every family into OUT_ROOT/FAMILY")
    ap.add_argument("--list", action="store_true", help="print the family names")
    args = ap.parse_args(argv)
    import transformers
    transformers.utils.logging.disable_progress_bar()
    if args.list:
        print("\n".join(BUILDERS))
        return 0
    if args.all:
        jobs = [(f, Path(args.all) / f) for f in BUILDERS]
    elif args.family and args.out:
        jobs = [(args.family, Path(args.out))]
    else:
        ap.error("give FAMILY OUT_DIR, or --all OUT_ROOT")
    failed = 0
    for family, out in jobs:
        t0 = time.perf_counter()
        try:
            build(family, out)
        except Exception as e:  # noqa: BLE001 - report and go on with the other families
            failed += 1
            print(f"{family}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
            continue
        missing = missing_requirements(family)
        note = f"  (processor needs {', '.join(missing)} to load)" if missing else ""
        print(f"{family}: {out}  {time.perf_counter() - t0:.2f} s  {dir_size(out) / 1024:.0f} KiB{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
