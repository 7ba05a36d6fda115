"""Audio encoder towers, run on the model's device, batched: log-mel features, then the encoder.

The encoder family is chosen by the config's ``model_type``, and its features follow that family's own
feature extractor (``preprocessor_config.json``: rate, mel bins, n_fft, hop, normalisation), in torch:
- ``whisper``: the encoder of any Whisper checkpoint, or an encoder-only one (``assets/tiny-audio``).
  log10 power mel (``torchaudio.transforms.MelSpectrogram``, slaney scale and norm), last frame dropped,
  floored at max - 8, (x + 4) / 4, over the clip zero-padded to the encoder's window: Whisper demands
  exactly ``2 * max_source_positions`` frames.
- ``audio-spectrogram-transformer`` (AST): Kaldi fbank (``torchaudio.compliance.kaldi.fbank``, one clip
  at a time, as ASTFeatureExtractor), padded to ``max_length`` frames, (x - mean) / (2 * std). The patch
  grid is averaged over frequency, giving one feature per time step.

Whisper's extractor pads the waveform with zeros; AST's pads its features instead, so for AST each clip's
length is recovered as the end of its last non-zero sample (trailing digital silence counts as padding)
and the fbank is padded there. A tower exposes ``sampling_rate``, ``hidden_size``, ``window`` (the samples
its input covers at most), ``positions(num_samples)`` and ``forward(wave) -> [B, positions, hidden]``.
transformers and torchaudio are imported when a tower is built.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import check_pretrained


def signal_lengths(wave: torch.Tensor) -> torch.Tensor:
    """[B, samples] -> samples up to and including each row's last non-zero one."""
    idx = torch.arange(1, wave.shape[-1] + 1, device=wave.device)
    return ((wave != 0) * idx).amax(dim=-1)


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
