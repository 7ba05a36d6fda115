"""The embedded default models: tiny-lm (byte-level BPE tokenizer with a ChatML template + a random Qwen2),
tiny-siglip and tiny-audio (a random WhisperEncoder). Seeded, and each reloaded and checked after saving."""
from __future__ import annotations

import json
from pathlib import Path

from .spec import ANSWERS, CLASSES, CLIP_SECONDS, PROMPTS, RATE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
GENERIC_ENGLISH = """
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words, and a short video can
say even more. You are a helpful assistant. Please answer the question about the image or the video in
one short sentence. Look carefully at the colours, the shapes and the objects in the scene before you
answer. If you are not sure, say that you are not sure instead of guessing. The weather today is sunny
with a light breeze from the west, and in the afternoon there may be some clouds over the hills. People
walk in the park, children play with a red ball, and an old man reads a newspaper on a wooden bench.
In the kitchen there is a table with bread, cheese, apples and a glass of water. The train leaves the
station at half past nine and arrives in the city two hours later. Science helps us understand the world:
we observe, we measure, we test an idea, and we change our minds when the evidence says we should.
Computers follow instructions written by people; a program reads some input, does a little work, and
writes an output. Good answers are correct, clear and brief. Thank you for your help! What time is it?
Where are you going? How many people live in this house? Which one do you prefer, the first or the
second? Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100 and 2024 appear in many documents. The
river flows through the valley to the sea, past green fields, small villages and a stone bridge. At
night the sky is dark and full of stars, the moon rises slowly, and the town becomes quiet. Music,
books, films and paintings are all ways in which people share stories with each other. This sentence
is here so that the tokenizer sees ordinary English and can encode any text, even text it never saw.
"""


def corpus() -> list[str]:
    """The tokenizer's training text: generic English, the ChatML role names and every image/video
    prompt and answer, so the demo's own text encodes in few tokens."""
    texts = [GENERIC_ENGLISH, "system\nuser\nassistant\n"]  # + ChatML role names
    for m in ("image", "video"):
        texts += PROMPTS[m] + [a.format(c) for a in ANSWERS[m] for c in CLASSES.values()]
    return texts


def build_tokenizer(path: Path):
    """Byte-level BPE (~512 tokens, never an unknown byte) with the ChatML specials and template, saved to
    ``path``; returns the HF tokenizer so build_lm can size the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus() * 4, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=["<|im_start|>"], model_max_length=1024)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(path)
    return hf


def build_lm(out: Path) -> None:
    """tiny-lm: the tokenizer + a seeded 2-layer Qwen2 with tied embeddings, then reloaded and checked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = out / "tiny-lm"
    tok = build_tokenizer(path)
    pad, eos = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=pad, bos_token_id=pad, eos_token_id=eos,
                      torch_dtype="float32")
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)

    # Checks: reload, forward pass, any string encodes losslessly, chat template prefix property.
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok("Ünïcode ✓ 🐱 <image> text never seen", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "Ünïcode ✓ 🐱 <image> text never seen"
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    msgs = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n"), (full, prompt)
    sys_msg = [{"role": "system", "content": "Be brief."}] + msgs
    assert tok.apply_chat_template(sys_msg, tokenize=False).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny-lm: vocab {len(tok)}, pad/bos {pad}, eos {eos}, <|im_start|> "
          f"{tok.convert_tokens_to_ids('<|im_start|>')}, {n_params:,} parameters")


def build_siglip(out: Path) -> None:
    """tiny-siglip: a seeded SiglipVisionModel (32x32 input, 8x8 patches -> 16 tokens) + its image processor."""
    import torch
    from transformers import AutoModel, SiglipVisionConfig, SiglipVisionModel

    path = out / "tiny-siglip"
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8, num_channels=3,
                             vision_use_head=False)  # last_hidden_state only: no unused head params
    torch.manual_seed(0)
    SiglipVisionModel(cfg).save_pretrained(path, safe_serialization=True)
    pre = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
           "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
           "rescale_factor": 0.00392156862745098, "size": {"height": 32, "width": 32}}
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")

    model = AutoModel.from_pretrained(path)
    assert isinstance(model, SiglipVisionModel), type(model)
    with torch.no_grad():
        assert model(pixel_values=torch.zeros(2, 3, 32, 32)).last_hidden_state.shape == (2, 16, 32)
    print(f"tiny-siglip: {sum(p.numel() for p in model.parameters()):,} parameters")


def build_tiny_audio(out: Path) -> None:
    """tiny-audio: a seeded WhisperEncoder (80 mels, CLIP_SECONDS window) + its feature extractor config."""
    import torch
    from transformers import AutoConfig, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    path = out / "tiny-audio"
    seconds = int(CLIP_SECONDS)
    # decoder fields keep Whisper's defaults, unused: only the encoder is saved (architectures: WhisperEncoder).
    # init_std 0.3, not Whisper's 0.02: at 0.02 a random encoder's output is ~99% its positional embeddings,
    # the same for every clip, and the demo cannot be learned; at 0.3 about half of it depends on the audio.
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        max_source_positions=seconds * RATE // 160 // 2, init_std=0.3, torch_dtype="float32")
    torch.manual_seed(0)
    WhisperEncoder(cfg).save_pretrained(path, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=RATE, hop_length=160, n_fft=400,
                            chunk_length=seconds).save_pretrained(path)

    assert AutoConfig.from_pretrained(path).model_type == "whisper"
    model = WhisperEncoder.from_pretrained(path)
    with torch.no_grad():
        frames = 2 * cfg.max_source_positions
        assert model(torch.zeros(2, 80, frames)).last_hidden_state.shape == (2, frames // 2, 32)
    print(f"tiny-audio: {sum(p.numel() for p in model.parameters()):,} parameters, {seconds} s window")

