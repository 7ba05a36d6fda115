"""Audio: features against librosa and the Hugging Face feature extractors, Whisper and AST encoders
forward and backward, mp4 soundtracks against a wav export, bad audio skipped with its reason, and
audio-visual samples from one mp4 or from separate files."""
import io
import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
import torch

from anyalign.data.pipeline import Skipped, decode
from modalities import AudioAdapter
from modalities.audio_decode import read_audio
from modalities.audio_towers import ASTTower, WhisperFeatures

from conftest import ASSETS


def _members(tar_path, pick) -> dict:
    """The first sample of a demo shard for which ``pick(fields)`` holds: {field: bytes}."""
    samples = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, _, field = m.name.partition(".")
            samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    return next(s for s in samples.values() if pick(s))


def av_mp4() -> bytes:
    """A demo clip with its speech soundtrack inside the mp4 (no separate flac)."""
    return _members(ASSETS / "data" / "audio_visual" / "val-000.tar", lambda s: "flac" not in s)["mp4"]


def speech(seconds: float = 1.5) -> np.ndarray:
    flac = _members(ASSETS / "data" / "audio" / "val-000.tar", lambda s: True)["flac"]
    wave, sr = read_audio(flac, "flac", seconds, 16000)
    assert sr == 16000
    return wave


def wav_bytes(wave: np.ndarray, sr: int = 16000, subtype: str = "FLOAT", fmt: str = "WAV") -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, str]:
    """Tiny random Whisper (a full encoder-decoder checkpoint) and AST, each saved with its feature extractor."""
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, WhisperConfig,
                              WhisperFeatureExtractor, WhisperForConditionalGeneration)
    root = tmp_path_factory.mktemp("audio-encoders")
    torch.manual_seed(0)
    whisper = WhisperConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=40,
                            max_source_positions=100, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, decoder_start_token_id=1)
    WhisperForConditionalGeneration(whisper).save_pretrained(root / "whisper")
    WhisperFeatureExtractor(feature_size=40, chunk_length=2).save_pretrained(root / "whisper")
    ast = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_mel_bins=32,
                    max_length=200, patch_size=16, frequency_stride=8, time_stride=10, num_labels=3)
    ASTForAudioClassification(ast).save_pretrained(root / "ast")  # a classifier checkpoint: ASTModel is inside it
    ASTFeatureExtractor(num_mel_bins=32, max_length=200).save_pretrained(root / "ast")
    return {"whisper": str(root / "whisper"), "ast": str(root / "ast")}


def test_torchaudio_log_mel_matches_librosa():
    import librosa
    wave = speech()
    ours = WhisperFeatures(16000, 80, 400, 160).log_mel(torch.from_numpy(wave)[None])[0].numpy()
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=80, fmin=0.0, fmax=8000.0,
                                         power=2.0, center=True, pad_mode="reflect", norm="slaney", htk=False)
    ref = np.log10(np.maximum(mel, 1e-10))[:, :-1]
    assert ours.shape == ref.shape == (80, len(wave) // 160)
    # docs/toolchain.md: measured ~2.4e-5 (log10 units) for slaney norm/scale; allow 1e-4
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert ref.max() - ref.min() > 5  # real speech, not silence


def test_whisper_features_match_hf_extractor(encoders):
    from transformers import WhisperFeatureExtractor
    adapter = AudioAdapter(encoder=encoders["whisper"], max_seconds=2.0)
    wave = speech(2.0)
    ref = WhisperFeatureExtractor.from_pretrained(encoders["whisper"])(
        wave, sampling_rate=16000, return_tensors="pt").input_features
    ours = adapter.tower.features(adapter.preprocess((wave, 16000))[None])
    assert ours.shape == ref.shape == (1, 40, 200)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)  # log10 mel error / 4 after Whisper's scaling


def test_ast_features_match_hf_extractor(encoders):
    from transformers import ASTFeatureExtractor
    adapter = AudioAdapter(encoder=encoders["ast"], max_seconds=1.5)
    assert isinstance(adapter.tower, ASTTower)
    wave = np.trim_zeros(speech(1.2), "b")  # shorter than max_seconds: AST pads its features, not the samples
    ref = ASTFeatureExtractor.from_pretrained(encoders["ast"])(wave, sampling_rate=16000,
                                                               return_tensors="pt").input_values
    item = adapter.preprocess((wave, 16000))
    assert item.shape == (24000,) and not item[len(wave):].any()
    ours = adapter.tower.features(item[None])
    assert ours.shape == ref.shape == (1, 200, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family, tokens", [("whisper", 25), ("ast", 5)])
def test_encoder_forward_backward(encoders, family, tokens):
    # 1 s: Whisper 100 frames -> 50 positions; AST 98 Kaldi frames -> 10 time patches; pool 2
    adapter = AudioAdapter(encoder=encoders[family], max_seconds=1.0, pool=2)
    adapter.bind(48)
    adapter.train()
    wave = speech(1.0)
    batch = adapter.collate([adapter.preprocess((wave[:n] * g, 16000)) for n, g in ((16000, 1), (9000, 1), (16000, 0))])
    assert batch.shape == (3, 16000)
    assert adapter.num_tokens(batch[0]) == tokens
    out = adapter(batch)
    assert out.shape == (3, tokens, 48)
    out.square().sum().backward()
    grads = [p.grad for p in adapter.projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None and not p.requires_grad for p in adapter.tower.parameters())  # frozen encoder
    assert not torch.allclose(out[0], out[1])


def test_whisper_encoder_weights_come_from_the_checkpoint(encoders):
    from transformers import WhisperForConditionalGeneration
    adapter = AudioAdapter(encoder=encoders["whisper"])
    expected = WhisperForConditionalGeneration.from_pretrained(encoders["whisper"]).model.encoder.state_dict()
    got = adapter.tower.encoder.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_mp4_soundtrack_equals_wav_export(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: cannot export the mp4's audio to wav")
    mp4 = av_mp4()
    (tmp_path / "clip.mp4").write_bytes(mp4)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "clip.mp4"), "-vn", "-c:a", "pcm_f32le",
                    str(tmp_path / "clip.wav")], check=True)
    a, sr_a = read_audio(mp4, "mp4", 10.0, 16000)
    b, sr_b = read_audio((tmp_path / "clip.wav").read_bytes(), "wav", 10.0, 16000)
    assert sr_a == sr_b == 16000
    lag = align(a, b)  # AAC decoders may or may not drop the encoder's priming samples
    x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    m = min(len(x), len(y))
    assert m > 0.9 * min(len(a), len(b)) and np.abs(y[:m]).max() > 0.1  # mostly overlapping, and speech
    # one AAC stream through two FFmpeg builds (decord's, the system's), float output: measured 1.2e-7
    np.testing.assert_allclose(x[:m], y[:m], atol=1e-5, rtol=0)


def align(a: np.ndarray, b: np.ndarray, max_lag: int = 2048) -> int:
    """The lag k (|k| <= max_lag) that best matches ``a[i + k]`` to ``b[i]`` (cross-correlation)."""
    n = min(len(a), len(b)) - 2 * max_lag
    ref = b[max_lag: max_lag + n]
    scores = [float(np.dot(a[max_lag + k: max_lag + k + n], ref)) for k in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


def _raw(key: str, prompt: str, **media) -> dict:
    rec = {"prompt": prompt, "chosen": "Yes.", "rejected": "No."}
    return {"__key__": key, "__url__": "mem", "json": json.dumps(rec).encode(), **media}


def test_bad_audio_is_skipped_with_its_reason():
    video_mp4 = _members(ASSETS / "data" / "video" / "val-000.tar", lambda s: True)["mp4"]  # no audio track
    sr0 = bytearray(wav_bytes(np.full(1600, 0.1, np.float32), subtype="PCM_16"))
    sr0[24:28] = bytes(4)  # the fmt chunk's sample rate field
    q = "<audio>\nWhat is said?"
    samples = [
        _raw("ok-flac", q, flac=wav_bytes(speech(), fmt="FLAC", subtype="PCM_16")),
        _raw("ok-wav-22k", q, wav=wav_bytes(np.sin(np.arange(22050) / 7).astype(np.float32), 22050)),
        _raw("ok-ogg", q, ogg=wav_bytes(speech(), fmt="OGG", subtype="VORBIS")),
        _raw("ok-mp4", q, mp4=av_mp4()),
        _raw("bad-bytes", q, wav=b"RIFF....WAVEnot really audio"),
        _raw("bad-empty", q, wav=wav_bytes(np.zeros(0, np.float32))),
        _raw("bad-noaudio", q, mp4=video_mp4),
        _raw("bad-mp4", q, mp4=av_mp4()[:400]),  # its header is cut: no stream at all
        _raw("bad-mp4-junk", q, mp4=b"x" * 1000),
        _raw("bad-nan", q, wav=wav_bytes(np.array([0.0, np.nan, 0.1], np.float32))),
        _raw("bad-inf", q, wav=wav_bytes(np.array([0.0, -np.inf], np.float32))),
        _raw("bad-rate0", q, wav=bytes(sr0)),
    ]
    adapter = AudioAdapter(max_seconds=2.0)
    out = list(decode(iter(samples), {"audio": adapter}))
    good = {x["key"]: x["media"]["audio"] for x in out if not isinstance(x, Skipped)}
    reasons = {x.key: x.reason for x in out if isinstance(x, Skipped)}
    assert sorted(good) == ["ok-flac", "ok-mp4", "ok-ogg", "ok-wav-22k"]
    for items in good.values():
        assert len(items) == 1 and items[0].shape == (32000,) and items[0].abs().max() > 0.05
    assert reasons["bad-bytes"].startswith("cannot decode audio")
    assert reasons["bad-empty"] == "audio has zero length"
    assert reasons["bad-noaudio"].startswith("mp4 has no audio track")
    assert reasons["bad-mp4"].startswith("cannot decode the audio of mp4")
    assert reasons["bad-mp4-junk"].startswith("cannot decode the audio of mp4") and "xxxxx" not in reasons["bad-mp4-junk"]
    assert reasons["bad-nan"] == reasons["bad-inf"] == "audio has NaN or inf samples"
    assert reasons["bad-rate0"] == "audio sample rate is 0"


def test_audio_visual_from_one_mp4_or_separate_files(tiny_vit):
    from modalities import VideoAdapter
    adapters = {"video": VideoAdapter(encoder=tiny_vit, num_frames=4), "audio": AudioAdapter(max_seconds=2.0)}
    av = av_mp4()
    silent = _members(ASSETS / "data" / "video" / "val-000.tar", lambda s: True)["mp4"]
    track = speech(2.0)
    both = "<video>\n<audio>\nWhat is said?"
    out = list(decode(iter([
        _raw("one-mp4", both, mp4=av),
        _raw("separate", both, mp4=silent, wav=wav_bytes(track)),
        _raw("video-only", "<video>\nWhat is shown?", mp4=av),   # no <audio>: the soundtrack is not read
        _raw("missing", both, mp4=silent),
    ]), adapters))
    by_key = {x["key"] if isinstance(x, dict) else x.key: x for x in out}
    one = by_key["one-mp4"]["media"]
    assert one["video"][0].shape == (4, 3, 32, 32) and one["audio"][0].shape == (32000,)  # 2 s of soundtrack
    expected, _ = read_audio(av, "mp4", 2.0, 16000)
    torch.testing.assert_close(one["audio"][0], torch.from_numpy(expected))
    sep = by_key["separate"]["media"]
    assert sep["video"][0].shape == (4, 3, 32, 32)
    torch.testing.assert_close(sep["audio"][0][: len(track)], torch.from_numpy(track))
    assert not sep["audio"][0][len(track):].any()  # zero-padded to max_seconds
    assert set(by_key["video-only"]["media"]) == {"video"}
    assert by_key["missing"].reason.startswith("mp4 has no audio track")


def test_export_reloads_the_audio_adapter(tiny_lm, tmp_path):
    from anyalign.export import load_aligned, save_aligned
    from anyalign.model import MultimodalLM
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {"audio": AudioAdapter(pool=10)}).eval()
    batch = model.adapters["audio"].collate([model.adapters["audio"].preprocess((speech(), 16000))] * 2)
    with torch.no_grad():
        before = model.adapters["audio"](batch)
        reloaded = load_aligned(save_aligned(model, tmp_path / "export"))
        after = reloaded.adapters["audio"](batch)
    assert json.loads((tmp_path / "export" / "anyalign.json").read_text())["adapters"]["audio"]["init_args"]["pool"] == 10
    torch.testing.assert_close(after, before)


def test_clips_of_any_length_share_one_shape_for_negatives():
    adapter = AudioAdapter(pool=10)
    short, full = (adapter.preprocess((speech(s), 16000)) for s in (0.5, 2.0))
    assert short.shape == full.shape == (32000,)  # what the corruption operators (swap) rely on
    rng = torch.Generator().manual_seed(0)
    assert torch.equal(adapter.corrupt([short], "swap", rng, donor=[full])[0], full)
    muted = adapter.corrupt([short], "mute", rng)
    adapter.bind(64)
    assert adapter(adapter.collate([short, full, *muted])).shape == (3, 10, 64)
