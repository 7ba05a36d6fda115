"""Audio adapter: decode and resample on the CPU workers; log-mel features, encoder, time pooling and the
MLP projector on the model's device, batched.

Decoding: soundfile from bytes (wav, flac, ogg, mp3), librosa as the fallback for compressed formats, and
decord's ``AudioReader`` for the soundtrack of an mp4 (it reads from ``io.BytesIO``, so no temporary
file). NaN/inf samples pass soundfile and librosa silently, and a zero sample rate either passes too
or fails with an obscure message, depending on the libsndfile version; both are checked here.

The encoder family is chosen by the config's ``model_type``, and its features follow that family's own
feature extractor (``preprocessor_config.json``: rate, mel bins, n_fft, hop, normalisation), in torch:
- ``whisper``: the encoder of any Whisper checkpoint, or an encoder-only one (``assets/tiny-audio``).
  log10 power mel (``torchaudio.transforms.MelSpectrogram``, slaney scale and norm), last frame dropped,
  floored at max - 8, (x + 4) / 4, over the clip zero-padded to the encoder's window: Whisper demands
  exactly ``2 * max_source_positions`` frames.
- ``audio-spectrogram-transformer`` (AST): Kaldi fbank (``torchaudio.compliance.kaldi.fbank``, one clip
  at a time, as ASTFeatureExtractor), padded to ``max_length`` frames, (x - mean) / (2 * std). The patch
  grid is averaged over frequency, giving one feature per time step.

Every clip is cropped or zero-padded to ``max_seconds`` on the CPU, so items have one shape (the
corruption operators rely on it) and take the same number of tokens. Whisper's extractor pads the
waveform with zeros too; AST's pads its features instead, so for AST each clip's length is recovered as
the end of its last non-zero sample (trailing digital silence counts as padding) and the fbank is padded
there. Only the encoder positions covering ``max_seconds`` are kept (as Qwen2-Audio keeps the valid part of
Whisper's 30 s window), then average-pooled over time by ``pool`` (Qwen2-Audio pools Whisper by 2).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import BadSample, ModalityAdapter, check_pretrained, freeze, mlp_projector
from .corruptions import AUDIO_OPS


# ---- CPU side ----
def read_audio(data: bytes, ext: str, max_seconds: float, sampling_rate: int) -> tuple[np.ndarray, int]:
    """Bytes -> (mono float32 samples cropped to ``max_seconds``, their rate). Files keep their own rate;
    an mp4's soundtrack is decoded at ``sampling_rate`` (decord cannot report the stream's own)."""
    if ext == "mp4":
        wave, sr = _read_soundtrack(data, sampling_rate)
    else:
        wave, sr = _read_file(data, ext, max_seconds)
    if not sr or sr <= 0:
        raise BadSample(f"audio sample rate is {sr}")
    wave = wave[: math.ceil(max_seconds * sr)]
    if wave.size == 0:
        raise BadSample("audio has zero length")
    if not np.isfinite(wave).all():
        raise BadSample("audio has NaN or inf samples")
    return wave, int(sr)


def _read_file(data: bytes, ext: str, max_seconds: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = f.samplerate
            # read only what is kept: a long file costs no more than max_seconds of it
            frames = math.ceil(max_seconds * sr) if sr > 0 else -1
            wave = f.read(frames, dtype="float32", always_2d=True)
        return wave.mean(axis=1), sr
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError on bad bytes
        first = f"{type(e).__name__}: {str(e)[:200]}"
    if ext in ("mp3", "ogg"):  # formats an older libsndfile lacks; librosa has other decoders
        import librosa
        try:
            wave, sr = librosa.load(io.BytesIO(data), sr=None, mono=True, duration=max_seconds)
            return np.asarray(wave, dtype=np.float32), sr
        except Exception:
            pass
    if _wav_rate(data) == 0:  # libsndfile's own message for this is "SF_INFO struct incomplete"
        raise BadSample("audio sample rate is 0")
    raise BadSample(f"cannot decode audio: {first}")


def _wav_rate(data: bytes) -> int | None:
    """The sample rate in a RIFF/WAVE header's fmt chunk, or None if there is none."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4: pos + 8], "little")
        if data[pos: pos + 4] == b"fmt " and pos + 16 <= len(data):
            return int.from_bytes(data[pos + 12: pos + 16], "little")
        pos += 8 + size + (size & 1)
    return None


def _read_soundtrack(data: bytes, sampling_rate: int) -> tuple[np.ndarray, int]:
    import decord

    try:  # decord resamples with FFmpeg's swresample while decoding
        reader = decord.AudioReader(io.BytesIO(data), sample_rate=sampling_rate, mono=True)
        wave = reader[:].asnumpy()
    except Exception as e:  # decord raises DECORDError on bad containers and on missing streams
        msg = " ".join(str(e).split())
        if "ERROR opening: " in msg:  # decord quotes the input bytes here: keep only its verdict
            msg = "ERROR opening: " + msg.rsplit(", ", 1)[-1]
        reason = f"cannot decode the audio of mp4: {type(e).__name__}: {msg[-160:]}"
        if "find audio stream" in str(e):
            # a truncated header lists no stream either: it has no audio track only if its video opens
            try:
                decord.VideoReader(io.BytesIO(data), num_threads=1)
            except Exception:
                raise BadSample(reason) from None
            raise BadSample("mp4 has no audio track, but the prompt has an <audio> marker") from None
        raise BadSample(reason) from None
    return wave.reshape(-1).astype(np.float32, copy=False), sampling_rate


def fit_length(wave: np.ndarray, sr: int, target_sr: int, num_samples: int) -> torch.Tensor:
    """Resample to ``target_sr``, then crop or zero-pad to ``num_samples``: float32 ``[num_samples]``."""
    if sr != target_sr:
        import librosa
        wave = librosa.resample(wave, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    out = torch.zeros(num_samples, dtype=torch.float32)
    n = min(len(wave), num_samples)
    out[:n] = torch.from_numpy(np.ascontiguousarray(wave[:n], dtype=np.float32))
    return out


def signal_lengths(wave: torch.Tensor) -> torch.Tensor:
    """[B, samples] -> samples up to and including each row's last non-zero one."""
    idx = torch.arange(1, wave.shape[-1] + 1, device=wave.device)
    return ((wave != 0) * idx).amax(dim=-1)


# ---- model side: encoder families ----
class WhisperFeatures(nn.Module):
    """WhisperFeatureExtractor's log-mel, batched in torch (its mel filters are librosa's slaney ones)."""

    def __init__(self, sampling_rate: int, n_mels: int, n_fft: int, hop: int):
        super().__init__()
        import torchaudio
        self.hop = hop
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sampling_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, f_min=0.0, f_max=8000.0,
            power=2.0, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> log10 power mel [B, n_mels, samples // hop] (Whisper drops the last frame)."""
        return self.mel(wave)[..., :-1].clamp(min=1e-10).log10()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.log_mel(wave)
        x = torch.maximum(x, x.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (x + 4.0) / 4.0


class WhisperTower(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(path)
        # an encoder-only checkpoint declares itself so; any other Whisper checkpoint holds encoder + decoder
        if "WhisperEncoder" in (config.architectures or []):
            self.encoder = WhisperEncoder.from_pretrained(path)
        else:
            self.encoder = WhisperModel.from_pretrained(path).get_encoder()
        self.extractor = _feature_extractor(WhisperFeatureExtractor, path)
        fe = self.extractor
        self.sampling_rate, self.hidden_size = fe.sampling_rate, config.d_model
        self.features = WhisperFeatures(fe.sampling_rate, fe.feature_size, fe.n_fft, fe.hop_length)
        self.frames = 2 * config.max_source_positions  # exactly what WhisperEncoder accepts
        self.window = self.frames * fe.hop_length       # samples that make those frames

    def positions(self, num_samples: int) -> int:
        """Encoder positions covering the first ``num_samples`` (the conv stem halves the frame rate)."""
        return math.ceil(math.ceil(num_samples / self.features.hop) / 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # Whisper's extractor pads the waveform with zeros to its window, and so do we
        wave = nn.functional.pad(wave, (0, self.window - wave.shape[-1]))
        with torch.autocast(wave.device.type, enabled=False):  # spectrograms in float32
            feats = self.features(wave.float())
        return self.encoder(input_features=feats.to(self.encoder.dtype)).last_hidden_state


class ASTTower(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        from transformers import ASTFeatureExtractor, ASTModel

        self.encoder = ASTModel.from_pretrained(path)
        self.extractor = _feature_extractor(ASTFeatureExtractor, path)
        config, fe = self.encoder.config, self.extractor
        self.sampling_rate, self.hidden_size = fe.sampling_rate, config.hidden_size
        self.max_length, self.n_mels = config.max_length, config.num_mel_bins
        if fe.num_mel_bins != config.num_mel_bins or fe.max_length != config.max_length:
            raise ValueError(f"AST feature extractor ({fe.num_mel_bins} mels, {fe.max_length} frames) does not "
                             f"match the model ({config.num_mel_bins}, {config.max_length}) in {path}")
        self.grid = self.encoder.embeddings.get_shape(config)  # (frequency patches, time patches)
        self.time_stride = config.time_stride
        self.frame, self.shift = int(fe.sampling_rate * 0.025), int(fe.sampling_rate * 0.010)  # Kaldi's 25/10 ms
        self.window = (self.max_length - 1) * self.shift + self.frame  # samples that make max_length frames

    def positions(self, num_samples: int) -> int:
        frames = max(1, 1 + (num_samples - self.frame) // self.shift)  # Kaldi's snip_edges framing
        return min(self.grid[1], math.ceil(frames / self.time_stride))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Fbank of each clip's own samples, zero-padded in feature space, as ASTFeatureExtractor does."""
        from torchaudio.compliance import kaldi

        fe, out = self.extractor, []
        for w, n in zip(wave, signal_lengths(wave).tolist()):  # kaldi.fbank takes one clip
            w = w[: max(n, self.frame)]
            fbank = kaldi.fbank(w[None], sample_frequency=fe.sampling_rate, window_type="hanning",
                                num_mel_bins=self.n_mels)[: self.max_length]
            out.append(nn.functional.pad(fbank, (0, 0, 0, self.max_length - len(fbank))))
        x = torch.stack(out)
        return (x - fe.mean) / (2 * fe.std) if fe.do_normalize else x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # spectrograms in float32
            feats = self.features(wave.float())
        h = self.encoder(input_values=feats.to(self.encoder.dtype)).last_hidden_state
        h = h[:, -self.grid[0] * self.grid[1]:]  # drop the cls and distillation tokens
        return h.unflatten(1, self.grid).mean(1)  # patches are frequency-major: average over frequency


AUDIO_TOWERS = {"whisper": WhisperTower, "audio-spectrogram-transformer": ASTTower}


def _feature_extractor(cls, path: str):
    try:
        return cls.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"audio encoder {path} needs its feature extractor config "
                                f"(preprocessor_config.json: sampling_rate, mel bins, n_fft, hop): {e}") from None


def load_audio_encoder(path: str) -> nn.Module:
    from transformers import AutoConfig

    check_pretrained(path, "audio encoder")
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in AUDIO_TOWERS:
        raise ValueError(f"audio encoder {path} has model_type {model_type!r}; supported: {sorted(AUDIO_TOWERS)}")
    return AUDIO_TOWERS[model_type](path)


class AudioAdapter(ModalityAdapter):
    placeholder = "<audio>"
    extensions = ("wav", "flac", "mp3", "ogg")
    container_extensions = ("mp4",)
    operators = AUDIO_OPS

    def __init__(
        self,
        encoder: str = "assets/tiny-audio",
        max_seconds: float = 2.0,
        pool: int = 2,
        projector_depth: int = 2,
        freeze_encoder: bool = True,
        freeze_projector: bool = False,
    ):
        """
        Args:
            encoder: Hugging Face audio encoder (local directory or hub id) with its preprocessor_config.json:
                a Whisper checkpoint (its encoder is used) or an AST (ASTModel) checkpoint.
            max_seconds: every clip is cropped or zero-padded to this length.
            pool: average this many consecutive encoder positions into one token.
            projector_depth: number of Linear layers in the MLP projector.
            freeze_encoder: keep the audio encoder's weights fixed.
            freeze_projector: keep the projector's weights fixed.
        """
        super().__init__()
        if max_seconds <= 0 or pool < 1:
            raise ValueError("max_seconds must be > 0 and pool >= 1")
        self.tower = load_audio_encoder(encoder)
        self.sampling_rate = self.tower.sampling_rate
        self.max_seconds, self.pool = max_seconds, pool
        self.num_samples = round(max_seconds * self.sampling_rate)
        if self.num_samples > self.tower.window:
            raise ValueError(f"max_seconds={max_seconds} is longer than the encoder's window of "
                             f"{self.tower.window / self.sampling_rate:g} s")
        self.positions = self.tower.positions(self.num_samples)
        self.projector_depth, self.freeze_projector = projector_depth, freeze_projector
        freeze(self.tower, freeze_encoder)
        self.projector = None

    def bind(self, lm_hidden_size: int) -> None:
        self.projector = mlp_projector(self.tower.hidden_size, lm_hidden_size, self.projector_depth)
        freeze(self.projector, self.freeze_projector)

    def decode(self, data: bytes, ext: str) -> tuple[np.ndarray, int]:
        return read_audio(data, ext, self.max_seconds, self.sampling_rate)

    def preprocess(self, raw: tuple[np.ndarray, int]) -> torch.Tensor:
        return fit_length(*raw, self.sampling_rate, self.num_samples)

    def num_tokens(self, item: torch.Tensor) -> int:
        return math.ceil(self.positions / self.pool)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        h = self.tower(batch)[:, : self.positions]
        if self.pool > 1:  # [B, T, D] -> [B, ceil(T / pool), D]; the last window averages what it has
            h = nn.functional.avg_pool1d(h.transpose(1, 2), self.pool, self.pool, ceil_mode=True).transpose(1, 2)
        return h

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)

    def export(self, directory) -> dict:
        out = Path(directory) / "encoder"
        self.tower.encoder.save_pretrained(out)
        self.tower.extractor.save_pretrained(out)
        return {"encoder": str(out)}
