"""espeak-ng speech and the sets built from it: data/audio (spoken class names) and data/audio_visual
(Ken Burns clips whose soundtrack names another class)."""
from __future__ import annotations

import io
import random
import subprocess
from pathlib import Path

import numpy as np

from .images import load_photo
from .shards import text_record, write_shards
from .spec import AV_CRF, CLASSES, CLIP_SECONDS, MORE_ANSWERS, MORE_PROMPTS, RATE, SPOKEN, VOICES
from .video import h264, ken_burns


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


def build_audio(out: Path) -> dict[str, int]:
    """data/audio: the chosen class's phrase, spoken, per pair."""
    spoken = list(SPOKEN.values())

    def sample(c: int, r: int, rng: random.Random, tmp: Path) -> dict:
        clip = flac(place(speech(spoken[c], rng), rng))
        return {"json": text_record(rng.choice(MORE_PROMPTS["audio"]), rng.choice(MORE_ANSWERS["audio"]),
                                    spoken[c], spoken[r]), "flac": clip}

    return write_shards("audio", "aud", out, sample)


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
