"""Build anyalign's embedded default assets: a tiny LM, tiny vision and audio encoders and demo DPO shards.

    python tools/make_demo_data.py --out assets [--only model|image|video|audio|multi_image|audio_visual ...]

Why: the configs, tests and quick-start need a model and data that exist offline, load in seconds on a CPU
and still exercise the real code paths (HF loading, chat templates, JPEG/H.264 decoding, WebDataset tars).

  tiny-lm/      byte-level BPE tokenizer (~512 tokens, ChatML template) + randomly initialised Qwen2 (2 layers)
  tiny-siglip/  randomly initialised SiglipVisionModel (32x32 input, 8x8 patches -> 16 tokens)
  tiny-audio/   randomly initialised WhisperEncoder (80 mels, 2 s window -> 100 positions) + its feature
                extractor config (preprocessor_config.json)
  data/image/   preference pairs over 8 scikit-image photographs (random crops, 64x64 JPEG)
  data/video/   the same classes as 16-frame 64x64 H.264 Ken Burns clips (ffmpeg/libx264)
  data/audio/   the classes' nouns spoken by espeak-ng (several voices, speeds, pitches), 16 kHz FLAC
  data/multi_image/  2-3 photographs per sample, asking about one of them by its position
  data/audio_visual/ Ken Burns clips with a speech soundtrack (AAC) saying another class; asks what is
                said or what is shown (a quarter of them as a silent mp4 + a separate FLAC)

Each pair's chosen and rejected answers share one template and differ only in the caption; every caption
is chosen and rejected equally often, so the preference can only be learned by looking at the media.
Everything is seeded; tar members get a fixed mtime and x264 runs single-threaded with bitexact muxing,
so reruns give byte-identical files with the same library, espeak-ng and ffmpeg versions. Building the
audio sets needs espeak-ng; nothing else (tests included) does.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

# skimage.data name -> caption noun phrase. Colour photographs, plus coins (greyscale -> RGB).
CLASSES = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket on a launch pad",
    "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": "stained tissue under a microscope",
    "stereo_motorcycle": "a motorcycle",
    "coins": "a tray of coins",
}
PROMPTS = {
    "image": ["<image>\nWhat is in this picture?", "<image>\nDescribe the image in a few words.",
              "What do you see in this photo?\n<image>", "<image>\nWhat is shown here?"],
    "video": ["<video>\nWhat does this video show?", "<video>\nDescribe the video in a few words.",
              "What is in this clip?\n<video>", "<video>\nWhat can be seen in this video?"],
}
ANSWERS = {
    "image": ["It shows {}.", "This is a picture of {}.", "I see {}.", "The image shows {}."],
    "video": ["It shows {}.", "This is a video of {}.", "I see {}.", "The video shows {}."],
}
# (samples per shard, train shards, seed base) per modality; val-000 uses a different seed.
SPLITS = {"image": (64, 4, 1000), "video": (48, 4, 2000),
          "audio": (32, 4, 3000), "multi_image": (64, 4, 4000), "audio_visual": (32, 4, 5000)}
SIZE, FRAMES, FPS = 64, 16, 8

# What a speaker says for each class (short, so a clip fits in 2 s at any of the speeds below).
SPOKEN = {"astronaut": "an astronaut", "chelsea": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket",
          "hubble_deep_field": "galaxies", "immunohistochemistry": "a microscope",
          "stereo_motorcycle": "a motorcycle", "coins": "coins"}
VOICES = ["en-us+m1", "en-us+m3", "en-us+f2", "en-us+f4", "en-gb+m2", "en-gb+f3", "en-gb-scotland+m4", "en-029+f1"]
RATE, CLIP_SECONDS, MULTI_SIZE, AV_CRF = 16000, 2.0, 32, 32
ORDINALS = ["first", "second", "third"]
MORE_PROMPTS = {
    "audio": ["<audio>\nWhat is said in this recording?", "<audio>\nWhat does the speaker say?",
              "Listen: <audio>\nWhich words are spoken?", "<audio>\nTranscribe the recording."],
    "multi_image": ["{marks}\nWhat is in the {nth} picture?", "{marks}\nDescribe the {nth} image in a few words.",
                    "Look at these pictures: {marks}\nWhat does the {nth} one show?"],
    "said": ["<video>\n<audio>\nWhat is said in this video?", "<video><audio>\nWhat does the speaker say?",
             "<video>\n<audio>\nWhich words are spoken in this clip?"],
    "shown": ["<video>\n<audio>\nWhat does the video show?", "<video><audio>\nWhat can be seen in this clip?",
              "<video>\n<audio>\nDescribe what is shown in a few words."],
}
MORE_ANSWERS = {
    "audio": ["The speaker says: {}.", "They say {}.", "I hear \"{}\".", "The recording says {}."],
    "multi_image": ["The {nth} picture shows {}.", "It shows {}.", "In the {nth} one I see {}."],
    "said": ["The speaker says: {}.", "Someone says {}."],
    "shown": ["The video shows {}.", "It shows {}."],
}
MTIME = 1_700_000_000  # fixed tar mtime for reproducible shards
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


def load_photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8), "RGB")


def pairs(n: int, rng: random.Random) -> list[tuple[int, int]]:
    """(chosen, rejected) class indices; each block of 8 has every class once as chosen and once as
    rejected (rejected = chosen + k mod 8, k uniform in 1..7 per block), so counts are exactly balanced."""
    out, k = [], len(CLASSES)
    for _ in range(n // k):
        perm, shift = rng.sample(range(k), k), rng.randint(1, k - 1)
        out += [(c, (c + shift) % k) for c in perm]
    rng.shuffle(out)
    return out


def record(modality: str, chosen: int, rejected: int, rng: random.Random) -> bytes:
    caps = list(CLASSES.values())
    answer = rng.choice(ANSWERS[modality])
    rec = {"prompt": rng.choice(PROMPTS[modality]),
           "chosen": answer.format(caps[chosen]), "rejected": answer.format(caps[rejected])}
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enh(img).enhance(rng.uniform(0.85, 1.15))
    return img


def random_crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """RandomResizedCrop: 40-100% of the area, aspect 3/4..4/3, random flip, resized to SIZE x SIZE."""
    w, h = img.size
    for _ in range(20):
        area = w * h * rng.uniform(0.4, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = min(w, h), min(w, h)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.resize((SIZE, SIZE), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return jitter(out, rng)


def jpeg(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **({"quality": 90} | options))
    return buf.getvalue()


def ken_burns(img: Image.Image, rng: random.Random) -> list[Image.Image]:
    """FRAMES square crops interpolated (smoothstep) from a random start box to a random end box."""
    w, h = img.size

    def box():
        s = min(w, h) * rng.uniform(0.45, 0.9)
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        return np.array([x, y, x + s, y + s])

    a, b = box(), box()
    flip = rng.random() < 0.5
    factors = [rng.uniform(0.85, 1.15) for _ in range(3)]
    frames = []
    for i in range(FRAMES):
        t = i / (FRAMES - 1)
        t = t * t * (3 - 2 * t)
        f = img.resize((SIZE, SIZE), Image.BICUBIC, box=tuple((1 - t) * a + t * b))
        f = f.transpose(Image.FLIP_LEFT_RIGHT) if flip else f
        for enh, k in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
            f = enh(f).enhance(k)
        frames.append(f)
    return frames


def h264(frames: list[Image.Image], tmp: Path, speech: np.ndarray | None = None, crf: int = 28) -> bytes:
    """H.264 clip; with ``speech`` (mono float at RATE), muxed with it as an AAC track."""
    out = tmp / "clip.mp4"
    audio = ["-an"]
    if speech is not None:
        import soundfile as sf
        sf.write(tmp / "speech.wav", speech, RATE, subtype="PCM_16")
        audio = ["-i", str(tmp / "speech.wav"), "-c:a", "aac", "-b:a", "8k", "-ac", "1", "-ar", str(RATE),
                 "-flags:a", "+bitexact"]
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{SIZE}x{SIZE}", "-r", str(FPS), "-i", "-", *audio, "-c:v", "libx264", "-preset", "veryfast",
           "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1", "-map_metadata", "-1",
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart", str(out)]
    raw = b"".join(np.asarray(f, dtype=np.uint8).tobytes() for f in frames)
    subprocess.run(cmd, input=raw, check=True)
    return out.read_bytes()


def write_shards(modality: str, short: str, out: Path, sample) -> dict[str, int]:
    """train-000..N and val-000 tars of ``sample(chosen, rejected, rng, tmp) -> {field: bytes}`` per pair."""
    import webdataset as wds

    per_shard, n_train, seed = SPLITS[modality]
    folder = out / "data" / modality
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    shards = [("train", i, seed + i) for i in range(n_train)] + [("val", 0, seed + 500)]
    with tempfile.TemporaryDirectory() as tmp:
        for split, idx, shard_seed in shards:
            rng = random.Random(shard_seed)
            path = folder / f"{split}-{idx:03d}.tar"
            with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=MTIME) as sink:
                for j, (c, r) in enumerate(pairs(per_shard, rng)):
                    fields = sample(c, r, rng, Path(tmp))
                    sink.write({"__key__": f"{short}-{split}-{idx * per_shard + j:06d}", **fields})
            counts[str(path.relative_to(out))] = per_shard
    return counts


def build_shards(modality: str, out: Path) -> dict[str, int]:
    photos = [load_photo(name) for name in CLASSES]
    ext = "jpg" if modality == "image" else "mp4"

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        media = jpeg(random_crop(photos[c], rng)) if modality == "image" else h264(ken_burns(photos[c], rng), tmp)
        return {"json": record(modality, c, r, rng), ext: media}

    return write_shards(modality, "img" if modality == "image" else "vid", out, sample)


def speech(text: str, rng: random.Random) -> np.ndarray:
    """espeak-ng saying ``text`` in a random voice, speed and pitch: mono float32 at RATE, silence trimmed,
    peak-normalised to a random level."""
    import librosa
    import soundfile as sf

    cmd = ["espeak-ng", "-v", rng.choice(VOICES), "-s", str(rng.randint(150, 200)), "-p", str(rng.randint(25, 75)),
           "--stdout", text]
    wave, sr = sf.read(io.BytesIO(subprocess.run(cmd, capture_output=True, check=True).stdout), dtype="float32")
    wave = librosa.resample(wave, orig_sr=sr, target_sr=RATE, res_type="soxr_hq")
    wave, _ = librosa.effects.trim(wave, top_db=40)
    wave = wave[: int(0.8 * CLIP_SECONDS * RATE)]
    return (wave * rng.uniform(0.3, 0.9) / max(float(np.abs(wave).max()), 1e-6)).astype(np.float32)


def place(wave: np.ndarray, rng: random.Random, length: int | None = None) -> np.ndarray:
    """``wave`` after a random lead-in of silence, in a buffer of ``length`` samples (default: just fits)."""
    room = int(CLIP_SECONDS * RATE) - len(wave)
    lead = rng.randint(0, min(room, RATE // 4) if length is None else room)
    out = np.zeros(length or lead + len(wave), dtype=np.float32)
    out[lead: lead + len(wave)] = wave
    return out


def flac(wave: np.ndarray) -> bytes:
    """16 kHz mono FLAC, 8-bit: synthetic speech stays clear and the shards stay small (~5 KB a clip)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, RATE, format="FLAC", subtype="PCM_S8")
    return buf.getvalue()


def text_record(prompt: str, answer: str, chosen: str, rejected: str, **fmt) -> bytes:
    rec = {"prompt": prompt, "chosen": answer.format(chosen, **fmt), "rejected": answer.format(rejected, **fmt)}
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def build_audio(out: Path) -> dict[str, int]:
    spoken = list(SPOKEN.values())

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        clip = flac(place(speech(spoken[c], rng), rng))
        return {"json": text_record(rng.choice(MORE_PROMPTS["audio"]), rng.choice(MORE_ANSWERS["audio"]),
                                    spoken[c], spoken[r]), "flac": clip}

    return write_shards("audio", "aud", out, sample)


def build_multi_image(out: Path) -> dict[str, int]:
    """The asked-about picture shows the chosen class, the others random classes, none the rejected one.
    (Rejecting the class of another picture of the sample would need the order, which the tiny model does
    not learn from this little data; tests/test_multi_image.py checks the order instead.)"""
    photos, caps, k = [load_photo(name) for name in CLASSES], list(CLASSES.values()), len(CLASSES)

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        n = rng.choice([2, 3])
        asked = rng.randrange(n)
        classes = [rng.choice([x for x in range(k) if x not in (c, r)]) for _ in range(n)]
        classes[asked] = c
        nth = ORDINALS[asked]
        prompt = rng.choice(MORE_PROMPTS["multi_image"]).format(marks=" ".join(["<image>"] * n), nth=nth)
        fields = {"json": text_record(prompt, rng.choice(MORE_ANSWERS["multi_image"]), caps[c], caps[r], nth=nth)}
        for i, cls in enumerate(classes):
            img = random_crop(photos[cls], rng).resize((MULTI_SIZE, MULTI_SIZE), Image.BICUBIC)
            fields[f"{i}.jpg"] = jpeg(img, quality=85, optimize=True)
        return fields

    return write_shards("multi_image", "mim", out, sample)


def build_audio_visual(out: Path) -> dict[str, int]:
    """Clips that show one class while a voice says another; the chosen answer names the asked stream's
    class, the rejected one a class in neither stream, so what is said can only be learned from the
    soundtrack, and what is shown only from the frames."""
    photos, caps, spoken = [load_photo(name) for name in CLASSES], list(CLASSES.values()), list(SPOKEN.values())

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        kind = rng.choice(["said", "shown"])
        other = rng.choice([x for x in range(len(CLASSES)) if x not in (c, r)])
        shown, said = (other, c) if kind == "said" else (c, other)
        names = spoken if kind == "said" else caps
        fields = {"json": text_record(rng.choice(MORE_PROMPTS[kind]), rng.choice(MORE_ANSWERS[kind]),
                                      names[c], names[r])}
        frames = ken_burns(photos[shown], rng)
        track = place(speech(spoken[said], rng), rng, int(CLIP_SECONDS * RATE))
        if rng.random() < 0.25:  # the other layout: a silent clip and its soundtrack as a separate file
            fields |= {"mp4": h264(frames, tmp, crf=AV_CRF), "flac": flac(track)}
        else:
            fields["mp4"] = h264(frames, tmp, speech=track, crf=AV_CRF)
        return fields

    return write_shards("audio_visual", "av", out, sample)


def corpus() -> list[str]:
    texts = [GENERIC_ENGLISH, "system\nuser\nassistant\n"]  # + ChatML role names
    for m in ("image", "video"):
        texts += PROMPTS[m] + [a.format(c) for a in ANSWERS[m] for c in CLASSES.values()]
    return texts


def build_tokenizer(path: Path):
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


README = """# Demo preference data

Built by `python tools/make_demo_data.py --out assets` (seeded; rebuilds byte-identically with the same
library/ffmpeg versions). Each shard is a plain WebDataset tar: `KEY.json` + `KEY.jpg` (image) or
`KEY.mp4` (video), keys like `img-train-000123`. `KEY.json`:

    {{"prompt": "<image>\\nWhat is in this picture?", "chosen": "It shows a cat.", "rejected": "It shows a rocket on a launch pad."}}

One `<image>`/`<video>` marker per prompt (4 prompt templates, marker before or after the question); chosen
and rejected use the same answer template and differ only in the caption. Every caption is chosen and
rejected equally often (exactly, per block of 8 samples), so the pairs can only be learned from the media.

| set | shards | samples | media |
|---|---|---|---|
| `image/train-{{000..003}}.tar` | 4 | 4 x 64 | random crop (40-100% area, aspect 3/4-4/3), flip, colour jitter, 64x64 JPEG q90 |
| `image/val-000.tar` | 1 | 64 | same, different seed |
| `video/train-{{000..003}}.tar` | 4 | 4 x 48 | 16 frames @ 8 fps, 64x64 H.264 (libx264 veryfast crf 28, yuv420p), Ken Burns pan/zoom |
| `video/val-000.tar` | 1 | 48 | same, different seed |

Classes (`skimage.data` image -> caption): {classes}.

Source photographs ship with scikit-image (`skimage.data`); see scikit-image's data documentation for
each image's licence.
"""


MORE_README = {
    "audio": """# Demo audio preference data

Built by `python tools/make_demo_data.py --out assets --only audio` (needs espeak-ng). `KEY.json` +
`KEY.flac` (16 kHz mono, 8-bit FLAC, at most 2 s): espeak-ng saying one of 8 phrases ({spoken}) in one of
{voices} voices, at 150-200 words per minute and a random pitch, after up to 0.25 s of silence, at a random
level. 4 x {n} training pairs + {n} held-out pairs (other seeds), e.g.

    {{"prompt": "<audio>\\nWhat is said in this recording?", "chosen": "The speaker says: a cat.", "rejected": "The speaker says: coins."}}

Chosen and rejected share one answer template; every phrase is chosen and rejected equally often.
""",
    "multi_image": """# Demo multi-image preference data

Built by `python tools/make_demo_data.py --out assets --only multi_image`. `KEY.json` + `KEY.0.jpg`,
`KEY.1.jpg` (+ `KEY.2.jpg`): 2 or 3 random crops ({size}x{size} JPEG) of the 8 photographs of
`data/image`, one `<image>` marker each, e.g.

    {{"prompt": "<image> <image> <image>\\nWhat is in the second picture?", "chosen": "The second picture shows a cat.", "rejected": "The second picture shows a rocket on a launch pad."}}

The chosen caption names the class of the picture asked about, the rejected one a class that no picture of
the sample shows (the other pictures show random other classes). 4 x {n} training pairs + {n} held-out
pairs.
""",
    "audio_visual": """# Demo audio-visual preference data

Built by `python tools/make_demo_data.py --out assets --only audio_visual` (needs espeak-ng and ffmpeg).
`KEY.json` + `KEY.mp4`: a 2 s, 64x64 H.264 Ken Burns clip of one photograph (crf {crf}) with an AAC
soundtrack (16 kHz mono, 8 kb/s) in which an espeak-ng voice names a different class. Half the prompts ask
what is said (chosen: the spoken phrase), half what is shown (chosen: the shown class); the rejected answer
names a class in neither stream, so the said half can only be learned from the soundtrack. A quarter of
the samples use the other layout: a silent `KEY.mp4` next to its soundtrack as `KEY.flac`. Every prompt
has both markers, e.g.

    {{"prompt": "<video>\\n<audio>\\nWhat is said in this video?", "chosen": "The speaker says: a rocket.", "rejected": "The speaker says: a cat."}}

4 x {n} training pairs + {n} held-out pairs.
""",
}


PARTS = ["model", "image", "video", "audio", "multi_image", "audio_visual"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="assets", type=Path)
    ap.add_argument("--only", action="append", choices=PARTS,
                    help="build only this part (repeatable); default: everything")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    parts, out, t0 = args.only or PARTS, args.out, time.time()
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    if "model" in parts:
        build_lm(out)
        build_siglip(out)
        build_tiny_audio(out)
    for m in ("image", "video"):
        if m in parts:
            counts.update(build_shards(m, out))
    if "image" in parts or "video" in parts:
        classes = ", ".join(f"`{k}` -> {v}" for k, v in CLASSES.items())
        (out / "data" / "README.md").write_text(README.format(classes=classes))
    builders = {"audio": build_audio, "multi_image": build_multi_image, "audio_visual": build_audio_visual}
    for m, build in builders.items():
        if m in parts:
            counts.update(build(out))
            fmt = {"n": SPLITS[m][0], "size": MULTI_SIZE, "voices": len(VOICES), "crf": AV_CRF,
                   "spoken": ", ".join(f'"{w}"' for w in SPOKEN.values())}
            (out / "data" / m / "README.md").write_text(MORE_README[m].format(**fmt))

    total = 0
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        size, rel = f.stat().st_size, f.relative_to(out)
        total += size
        extra = f"  {counts[str(rel)]} samples" if str(rel) in counts else ""
        print(f"{size / 1024:9.1f} KB  {out / rel}{extra}")
    print(f"total {total / 1024 / 1024:.2f} MB, {sum(counts.values())} samples written, "
          f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
