"""Audio decoding on the CPU workers: bytes -> mono float32 waveform and its rate, then one fixed length.

Two decoders, both reading from bytes (no temporary file) and neither needing a system binary:

- soundfile (libsndfile, in its wheel) reads wav, flac, mp3, ogg (Vorbis and Opus) and ``.opus`` files, at
  their own rate, and only the first ``max_seconds`` of them;
- decord's ``AudioReader`` (the FFmpeg 8 libraries in the decord2 wheel) reads what libsndfile cannot: AAC in
  ``.m4a``, the soundtrack of an mp4/mov/mkv/webm (Opus or Vorbis in WebM), and is the fallback when soundfile
  refuses a file of another extension. It decodes at the adapter's ``sampling_rate`` (decord cannot report the
  stream's own rate). librosa is no fallback for bytes: its second decoder (audioread) needs a file path and a
  system ffmpeg.

NaN/inf samples pass soundfile silently, and a zero sample rate either passes too or fails with an obscure
message, depending on the libsndfile version; both are checked here. A file no decoder reads is refused with
what each decoder said, in words first and the library's own text, shortened, after it.

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

#: extensions decoded by FFmpeg (decord) directly: containers libsndfile does not read
FFMPEG_EXTENSIONS = ("m4a", "mp4", "mov", "mkv", "webm")


def read_audio(data: bytes, ext: str, max_seconds: float, sampling_rate: int) -> tuple[np.ndarray, int]:
    """Bytes -> (mono float32 samples cropped to ``max_seconds``, their rate). Files soundfile reads keep their
    own rate; what FFmpeg decodes (m4a, the soundtrack of a video container) comes at ``sampling_rate``."""
    ext = ext.lower()
    if ext in FFMPEG_EXTENSIONS:
        wave, sr = _read_ffmpeg(data, ext, sampling_rate)
    else:
        wave, sr = _read_file(data, ext, max_seconds, sampling_rate)
    if not sr or sr <= 0:
        raise BadSample(f"audio sample rate is {sr}")
    wave = wave[: math.ceil(max_seconds * sr)]
    if wave.size == 0:
        raise BadSample("audio has zero length")
    if not np.isfinite(wave).all():
        raise BadSample("audio has NaN or inf samples")
    return wave, int(sr)


def _read_file(data: bytes, ext: str, max_seconds: float, sampling_rate: int) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = f.samplerate
            # read only what is kept: a long file costs no more than max_seconds of it
            frames = math.ceil(max_seconds * sr) if sr > 0 else -1
            wave = f.read(frames, dtype="float32", always_2d=True)
        return wave.mean(axis=1), sr
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError on bad bytes
        first = _soundfile_words(e)
    if _wav_rate(data) == 0:  # libsndfile's own message for this is "SF_INFO struct incomplete"
        raise BadSample("audio sample rate is 0")
    if data[:4] != b"RIFF" and data[:4] != b"fLaC":  # FFmpeg may read what this libsndfile does not
        try:
            return _decord_audio(data, sampling_rate)
        except Exception as e:
            second = _ffmpeg_words(e)
        raise BadSample(f"cannot decode audio (.{ext}): soundfile: {first}; FFmpeg (decord): {second}")
    raise BadSample(f"cannot decode audio (.{ext}): {first}")


def _soundfile_words(e: Exception) -> str:
    from .video import decoder_text

    text = decoder_text(e).replace("Error opening : ", "")
    if "Format not recognised" in text:
        return f"not a format libsndfile reads [{text}]"
    if "data' chunk" in text or "Error in WAV file" in text:
        return f"WAV file without usable audio data [{text}]"
    return text


def _ffmpeg_words(e: Exception) -> str:
    from .video import decoder_text

    text = decoder_text(e)
    if "find audio stream" in text:
        return f"no audio stream in the file [{text}]"
    if "Invalid data" in text or "ERROR opening" in text:
        return f"not a container FFmpeg can read: corrupt, cut off, or not audio [{text}]"
    return text


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


def _decord_audio(data: bytes, sampling_rate: int) -> tuple[np.ndarray, int]:
    import decord

    # decord resamples with FFmpeg's swresample while decoding
    reader = decord.AudioReader(io.BytesIO(data), sample_rate=sampling_rate, mono=True)
    wave = reader[:].asnumpy()
    return wave.reshape(-1).astype(np.float32, copy=False), sampling_rate


def _read_ffmpeg(data: bytes, ext: str, sampling_rate: int) -> tuple[np.ndarray, int]:
    import decord

    try:
        return _decord_audio(data, sampling_rate)
    except Exception as e:  # decord raises DECORDError on bad containers and on missing streams
        reason = f"cannot decode the audio of {ext}: {_ffmpeg_words(e)}"
        if "find audio stream" in str(e) and ext != "m4a":
            # a truncated header lists no stream either: it has no audio track only if its video opens
            try:
                decord.VideoReader(io.BytesIO(data), num_threads=1)
            except Exception:
                raise BadSample(reason) from None
            raise BadSample(f"{ext} has no audio track, but the prompt has an <audio> marker") from None
        raise BadSample(reason) from None


def fit_length(wave: np.ndarray, sr: int, target_sr: int, num_samples: int) -> torch.Tensor:
    """Resample to ``target_sr``, then crop or zero-pad to ``num_samples``: float32 ``[num_samples]``."""
    if sr != target_sr:
        import librosa
        wave = librosa.resample(wave, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    out = torch.zeros(num_samples, dtype=torch.float32)
    n = min(len(wave), num_samples)
    out[:n] = torch.from_numpy(np.ascontiguousarray(wave[:n], dtype=np.float32))
    return out
