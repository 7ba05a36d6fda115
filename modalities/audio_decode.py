"""Audio decoding on the CPU workers: bytes -> mono float32 waveform and its rate, then one fixed length.

soundfile reads from bytes (wav, flac, ogg, mp3), librosa is the fallback for compressed formats, and
decord's ``AudioReader`` reads the soundtrack of an mp4 (from ``io.BytesIO``, so no temporary file).
NaN/inf samples pass soundfile and librosa silently, and a zero sample rate either passes too or fails
with an obscure message, depending on the libsndfile version; both are checked here.

Every clip is cropped or zero-padded to the adapter's ``max_seconds`` (``fit_length``), so items have one
shape (the corruption operators rely on it) and take the same number of tokens. soundfile, librosa and
decord are imported only when a clip is decoded.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from .base import BadSample


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
