"""Corrupt-input suite: 40+ distinct bad samples of every kind the adapters read, mixed into good shards,
through a real one-epoch ``fit`` with image, video and audio adapters and two data workers. Every good
sample trains exactly once with its own labels; every bad one is reported by key with its reason; the
inspector reports the same bad samples with the same reasons."""
import io
import json
import re
import struct
import tarfile
import time
import zlib
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import yaml

from anyalign.__main__ import main
from anyalign.module import AlignModule

from conftest import ASSETS, ROOT, jpeg_bytes


# ---- media, good and broken ----
def demo_mp4s() -> list[bytes]:
    with tarfile.open(ASSETS / "data" / "video" / "val-000.tar") as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".mp4")][:3]


def png_bytes(seed: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(seed))).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float = 0.8, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def zero_frame_tables(mp4: bytes) -> bytes:
    """The clip with its sample tables (stts, stsz, stsc, stco) emptied: the container lists 0 frames."""
    b = bytearray(mp4)
    for box in (b"stts", b"stsz", b"stsc", b"stco"):
        at = b.find(box) + 8 + (4 if box == b"stsz" else 0)  # past type, version/flags (and stsz's sample size)
        b[at:at + 4] = bytes(4)
    return bytes(b)


def tiny_audio_encoder(tmp_path_factory) -> str:
    """The embedded tiny Whisper encoder, or the same recipe built here while assets/ lacks it."""
    if (ASSETS / "tiny-audio" / "config.json").exists():
        return str(ASSETS / "tiny-audio")
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    path = tmp_path_factory.mktemp("tiny-audio")
    cfg = WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        max_source_positions=100)
    torch.manual_seed(0)
    WhisperEncoder(cfg).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400,
                            chunk_length=2).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def audio_encoder(tmp_path_factory) -> str:
    return tiny_audio_encoder(tmp_path_factory)


# ---- the shards ----
def sample(key: str, prompt="<image>\nWhat is this?", **members) -> list[tuple[str, bytes]]:
    """A sample as tar members; the chosen answer names the key, so a moved label is caught."""
    rec = members.pop("json", record(key, prompt=prompt))
    data = rec if isinstance(rec, bytes) else json.dumps(rec).encode()
    return [(f"{key}.json", data)] + [(f"{key}.{field.replace('_', '.')}", v) for field, v in members.items()]


def record(key: str, **changes) -> dict:
    """The JSON record of ``key``, with fields changed (None: left out)."""
    r = {"prompt": "<image>\nWhat is this?", "chosen": f"Answer for {key}.", "rejected": f"Wrong for {key}."}
    r.update(changes)
    return {k: v for k, v in r.items() if v is not None}


def write_tar(path: Path, members: list[tuple[str, bytes]], cut_last: bool = False) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if cut_last:  # the shard breaks off in the middle of its last member's data
        with tarfile.open(path) as tar:
            last = tar.getmembers()[-1]
        path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])
    return str(path)


def build(tmp: Path) -> tuple[list[str], set[str], dict[str, str]]:
    """-> (shards, good keys, {bad key: a word its reason must contain})."""
    mp4 = demo_mp4s()
    jpg, img, vid, aud = jpeg_bytes(1), "<image>\nWhat is this?", "<video>\nWhat happens?", "<audio>\nWhat's said?"
    messages = record("g-messages", system="Be brief.", prompt=[{"role": "user", "content": "<image> what?"}],
                      chosen=[{"role": "assistant", "content": "Answer for g-messages."}])
    good = [
        *[sample(f"g-img-{i}", jpg=jpeg_bytes(10 + i)) for i in range(6)],
        sample("g-png", png=png_bytes(3)),
        sample("g-two-images", "<image> and <image>: which?", **{"0_jpg": jpeg_bytes(4), "1_png": png_bytes(5)}),
        *[sample(f"g-vid-{i}", vid, mp4=mp4[i]) for i in range(3)],
        sample("g-wav", aud, wav=wav_bytes(tone())),
        sample("g-flac", "Listen: <audio>", flac=wav_bytes(tone(1.5, 220), fmt="FLAC")),
        sample("g-video-and-audio", "<video><audio>\nWhat happens?", mp4=mp4[1], flac=wav_bytes(tone(), fmt="FLAC")),
        sample("g-text-only", "Say hello."),
        sample("g-messages", json=messages, jpg=jpeg_bytes(6)),
        sample("g-unknown-members", jpg=jpeg_bytes(7), txt=b"notes", xyz=b"\x00\x01", cls=b"3"),  # ignored members
        sample("g-upper-ext", JPG=jpeg_bytes(8)),
        sample("g-dup-key", jpg=jpeg_bytes(9)),  # its first occurrence is good; the second is the bad one
    ]
    bad: dict[str, tuple[list, str]] = {}  # key: (members, a word its reason must contain)

    def add(key: str, word: str, prompt: str = img, extra: tuple = (), **members):
        bad[key] = (sample(key, prompt, **members) + list(extra), word)

    # images
    add("b-trunc-jpeg", "truncated", jpg=jpg[: len(jpg) // 2])
    add("b-magic-jpeg", "cannot identify", jpg=b"\0\0\0\0" + jpg[4:])
    add("b-zero-jpg", "cannot identify", jpg=b"")
    add("b-bomb-png", "pixels", png=png_header(100_000, 100_000))
    add("b-80mp-png", "pixel limit", png=png_header(10_000, 8_000))
    add("b-text-as-png", "cannot identify", png=b"this is not an image")
    add("b-bad-idat-png", "truncated", png=png_header(40, 40))
    # video
    add("b-trunc-mp4", "cannot open video", vid, mp4=mp4[0][:300])
    add("b-half-mp4", "cannot decode video frames", vid, mp4=mp4[0][: len(mp4[0]) // 2])
    add("b-random-mp4", "cannot open video", vid, mp4=np.random.default_rng(0).bytes(5000))
    add("b-zero-mp4", "cannot open video", vid, mp4=b"")
    add("b-0-frames-mp4", "cannot open video", vid, mp4=zero_frame_tables(mp4[0]))
    add("b-no-video-stream", "video stream", vid,  # its one track declared as sound
        mp4=mp4[0].replace(b"hdlr" + bytes(8) + b"vide", b"hdlr" + bytes(8) + b"soun"))
    # audio
    wav = wav_bytes(tone())
    add("b-random-wav", "cannot decode audio", aud, wav=b"RIFF" + bytes(100))
    add("b-zero-length-wav", "zero length", aud, wav=wav_bytes(np.zeros(0, np.float32)))
    add("b-nan-wav", "NaN", aud, wav=wav_bytes(np.full(800, np.nan, np.float32), subtype="FLOAT"))
    add("b-rate-0-wav", "sample rate is 0", aud, wav=wav[:24] + bytes(8) + wav[32:])  # rate and byte rate fields
    add("b-zero-flac", "cannot decode audio", aud, flac=b"")
    add("b-silent-soundtrack", "no audio track", "<video><audio>\nWhat is said?", mp4=mp4[2])
    # the JSON record
    add("b-broken-json", "invalid json", json=b'{"prompt": "<image>", "chosen": ', jpg=jpg)
    add("b-array-json", "not an object", json=b'["<image>", "a", "b"]', jpg=jpg)
    latin1 = '{"prompt": "<image> caf\xe9", "chosen": "a", "rejected": "b"}'.encode("latin-1")
    add("b-latin1-json", "UTF-8", json=latin1, jpg=jpg)
    add("b-empty-json", "invalid json", json=b"", jpg=jpg)
    add("b-no-chosen", "'chosen'", json=record("x", chosen=None), jpg=jpg)
    add("b-no-rejected", "'rejected'", json=record("x", rejected=None), jpg=jpg)
    add("b-no-prompt", "missing 'prompt'", json=record("x", prompt=None), jpg=jpg)
    add("b-number-chosen", "'chosen' must be", json=record("x", chosen=42), jpg=jpg)
    add("b-message-not-text", "string 'content'", json=record("x", prompt=[{"role": "user", "content": [1]}]), jpg=jpg)
    add("b-half-unpaired", "label", json={"prompt": img, "completion": "a"}, jpg=jpg)
    bad["b-no-json"] = ([("b-no-json.jpg", jpg)], "no KEY.json")
    # media vs markers
    add("b-missing-media", "placeholder")
    add("b-extra-media", "placeholder", "What is this?", jpg=jpg)
    add("b-two-markers-one-image", "placeholder", "<image> <image>?", jpg=jpg)
    add("b-one-marker-two-images", "placeholder", **{"0_jpg": jpg, "1_jpg": jpg})
    add("b-unnumbered-and-numbered", "without item numbers", "<image> <image>", jpg=jpg, **{"0_jpg": jpg})
    add("b-video-marker-image-member", "placeholder", vid, jpg=jpg)
    add("b-dup-member", "duplicate member", jpg=jpg, extra=[("b-dup-member.jpg", jpg)])
    add("g-dup-key", "duplicate key", jpg=jpeg_bytes(2))
    # text
    add("b-placeholder-in-chosen", "placeholder", json=record("x", chosen="It is <image>."), jpg=jpg)
    add("b-placeholder-in-rejected", "placeholder", json=record("x", rejected="A <video>."), jpg=jpg)
    add("b-prompt-too-long", "max_length", json=record("x", prompt="<image> " + "word " * 400), jpg=jpg)
    add("b-media-too-long", "max_length", "<image>" * 17, **{f"{i}_jpg": jpg for i in range(17)})
    keys = [k for k in bad if k != "g-dup-key"]
    parts = [(good[0:7], keys[0:14]), (good[7:12], keys[14:28]), (good[12:-1], keys[28:])]
    # each shard: good samples with bad ones between them; shard 0 starts with g-dup-key and ends with its
    # second occurrence; shard 2 breaks off inside its last member
    shards = [[m for i, g in enumerate(gs) for m in g + [x for k in bs[i::len(gs)] for x in bad[k][0]]]
              for gs, bs in parts]
    shards[0] = good[-1] + shards[0] + bad["g-dup-key"][0]
    cut = sample("b-shard-cut-here", jpg=jpeg_bytes(0, size=200))
    paths = [write_tar(tmp / f"mixed-00{i}.tar", members) for i, members in enumerate(shards[:2])]
    paths.append(write_tar(tmp / "mixed-002.tar", shards[2] + cut, cut_last=True))
    expected = {k: word for k, (_, word) in bad.items()} | {"b-shard-cut-here": "shard unreadable"}
    return paths, {g[0][0].removesuffix(".json") for g in good}, expected


def stable(reason: str) -> str:
    """A reason without what changes from run to run: decoder log timestamps, object addresses."""
    return re.sub(r"\[\d\d:\d\d:\d\d\]|at 0x[0-9a-f]+", "", reason)


class Recorder(L.Callback):
    """Every trained row's key with its decoded chosen and rejected text, and every skipped record."""

    def __init__(self):
        self.rows, self.skipped, self.datamodule = [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.skipped += batch["skipped"]
        tok = pl_module.policy.tokenizer
        for i, key in enumerate(batch["keys"]):
            text = {seq: tok.decode(batch["input_ids"][i][batch["target_seq"][i] == batch["index"][seq][i]].tolist())
                    for seq in ("chosen", "rejected")}
            self.rows.append((key, text))

    def on_fit_end(self, trainer, pl_module):
        self.datamodule = trainer.datamodule


def write_config(tmp: Path, shards: list[str], audio_encoder: str) -> str:
    cfg = yaml.safe_load((ROOT / "configs" / "image_dpo.yaml").read_text())
    cfg = {k: v for k, v in cfg.items() if k != "config" and not k.startswith("trainer.")}  # own trainer below
    cfg["trainer"] = {"accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0, "logger": False,
                      "enable_checkpointing": False, "enable_progress_bar": False, "default_root_dir": str(tmp / "run")}
    video = {"encoder": "assets/tiny-siglip", "num_frames": 4, "spatial_pool": 2}
    cfg["model"]["adapters"]["video"] = {"class_path": "modalities.VideoAdapter", "init_args": video}
    cfg["model"]["adapters"]["audio"] = {"class_path": "modalities.AudioAdapter",
                                         "init_args": {"encoder": audio_encoder, "max_seconds": 1.0, "pool": 4}}
    cfg["model"] |= {"scheduler": "constant", "warmup_steps": 0, "export_dir": None}
    cfg["data"] |= {"train_shards": shards, "val_shards": None, "batch_size": 4, "num_workers": 2}
    path = tmp / "corrupt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_corrupt_suite_one_epoch(tmp_path, audio_encoder, monkeypatch):
    monkeypatch.chdir(ROOT)
    shards, good, expected = build(tmp_path)
    assert len(expected) >= 30 and len(set(good) & set(expected)) == 1  # g-dup-key: once good, once bad
    recorder = Recorder()
    own_callbacks = AlignModule.configure_callbacks
    monkeypatch.setattr(AlignModule, "configure_callbacks", lambda self: own_callbacks(self) + [recorder])
    main(["fit", "--config", write_config(tmp_path, shards, audio_encoder),
          "--trainer.max_epochs", "1", "--trainer.max_steps", "-1"])

    trained = Counter(key for key, _ in recorder.rows)
    reasons = {key: reason for _, key, reason in recorder.skipped}
    hist = Counter(re.sub(r"(?<![\w-])\d+", "N", r.split(":")[0]) for r in reasons.values())
    print(f"\n[corrupt suite] {len(shards)} shards: {len(good)} good samples trained {sum(trained.values())} times, "
          f"{len(reasons)} bad samples reported ({len(recorder.skipped)} records)\nreasons:")
    for reason, n in hist.most_common():
        print(f"  {n:3d}  {reason}")

    assert trained == Counter({k: 1 for k in good}), "every good sample exactly once, nothing else"
    for key, text in recorder.rows:  # each row's labels are its own sample's
        assert text["chosen"].startswith(f"Answer for {key}.") and text["rejected"].startswith(f"Wrong for {key}.")
    assert len(recorder.skipped) == len(reasons) == len(expected), "every bad sample reported once"
    for key, word in expected.items():
        assert key in reasons, f"{key} was not reported"
        assert word in reasons[key], f"{key}: {reasons[key]!r} lacks {word!r}"

    # the inspector reports the same bad samples, with the same reasons, as training did
    from anyalign.data.scan import example_stages, scan
    dm = recorder.datamodule
    report = scan(dm.train_urls, example_stages(dm), 0, dict(dm.model.adapters.items()))
    assert {b["key"]: stable(b["reason"]) for b in report["bad_samples"]} == {k: stable(r) for k, r in reasons.items()}
    assert report["good"] == len(good) and report["members"]["txt"]["read_by"] == []

    # a header claiming 100000 x 100000 pixels is refused before any pixel is decoded
    image = dm.model.adapters["image"]
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="pixels"):
        image.decode(png_header(100_000, 100_000), "png")
    assert time.perf_counter() - t0 < 0.5
