"""Negatives corrupt the content, never the padding: a time or position operator applied to a padded item
leaves the padding where the original's was (a reversed 1 s clip in a 2 s window must not move its sound into
the second half, a cue the model would learn instead of the content), changes the content, and keeps the
valid length an encoder reads (AST's ``signal_lengths``). Unpadded items get what they got before."""
import pytest
import torch

from modalities.audio_towers import signal_lengths
from modalities.corruptions import (AUDIO_OPS, MULTI_IMAGE_OPS, VIDEO_OPS, _derangement, sound_span)

from test_audio import speech

RATE = 16000
#: the audio operators that move or change the sound in time (mute and swap replace the content whole)
TIME_OPS = ["reverse", "shift", "shuffle_segments", "noise"]


def padded(seconds: float = 1.0, lead: float = 0.1, window: float = 2.0, seed: int = 0) -> torch.Tensor:
    """A chirp of ``seconds`` after ``lead`` s of silence, zero-padded to ``window`` s, with runs of exact zeros
    inside the sound (as 8-bit speech has), so cuts must avoid them."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    sound = torch.sin(2 * torch.pi * (200 + 600 * t) * t) * 0.5 + 0.05 + 0.01 * torch.rand(len(t), generator=g)
    sound[len(t) // 3: len(t) // 3 + 40] = 0.0      # a quiet gap inside the sound
    out = torch.zeros(int(window * RATE))
    a = int(lead * RATE)
    out[a:a + len(sound)] = sound
    return out


def demo_clip() -> torch.Tensor:
    """A spoken demo clip (8-bit FLAC: exact zeros inside), as the audio adapter pads it to 2 s."""
    wave = torch.from_numpy(speech(2.0))
    out = torch.zeros(2 * RATE)
    out[: len(wave)] = wave
    return out


def assert_padding_kept(x: torch.Tensor, y: torch.Tensor, op: str) -> None:
    start, end = sound_span(x)
    assert 0 < end - start < len(x), "the test clip must be padded"
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[:start], x[:start]) and torch.equal(y[end:], x[end:]), f"{op} changed the padding"
    assert sound_span(y) == (start, end), f"{op} moved the sound: {sound_span(y)} vs {(start, end)}"
    assert torch.equal(signal_lengths(y[None]), signal_lengths(x[None])), f"{op} changed the valid length"
    assert not torch.equal(y[start:end], x[start:end]), f"{op} left the content unchanged"


@pytest.mark.parametrize("op", TIME_OPS)
@pytest.mark.parametrize("seed", range(5))
def test_audio_operator_keeps_padding(op, seed):
    x = padded(seconds=0.6 + 0.2 * seed, lead=0.05 * seed)
    y = AUDIO_OPS[op]([x], torch.Generator().manual_seed(seed))[0]
    assert_padding_kept(x, y, op)


@pytest.mark.parametrize("op", TIME_OPS)
def test_audio_operator_keeps_padding_on_speech(op):
    x = demo_clip()
    for seed in range(5):
        assert_padding_kept(x, AUDIO_OPS[op]([x], torch.Generator().manual_seed(seed))[0], op)


def test_reversal_would_have_moved_the_sound():
    """What the rule prevents: the whole window reversed puts a 1 s sound into the second half of 2 s."""
    x = padded(seconds=1.0, lead=0.0)
    assert sound_span(x.flip(0))[0] >= RATE
    assert sound_span(AUDIO_OPS["reverse"]([x], torch.Generator())[0]) == sound_span(x)


def test_audio_operators_unchanged_on_unpadded_clips():
    """A clip whose sound fills its window gets what the operators gave before the rule."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(RATE, generator=g) * 2 - 1 + 1e-3
    assert sound_span(x) == (0, RATE)
    assert torch.equal(AUDIO_OPS["reverse"]([x], torch.Generator())[0], x.flip(0))
    rng, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sigma = torch.sqrt(x.pow(2).mean() / 10 ** (-5.0 / 10))
    want = x + sigma * torch.randn(x.shape, generator=ref, dtype=x.dtype)
    assert torch.equal(AUDIO_OPS["noise"]([x], rng, snr_db=-5.0)[0], want)


@pytest.mark.parametrize("op", sorted(AUDIO_OPS))
def test_every_audio_operator_keeps_shape_and_silence_outside_the_sound(op):
    """mute and swap replace the content whole; none of the operators puts anything into the padding that
    was not there (swap brings the donor's own clip, padding included)."""
    x, donor = padded(seed=0), padded(seconds=0.5, seed=1)
    y = AUDIO_OPS[op]([x], torch.Generator().manual_seed(0), donor=[donor])[0]
    assert y.shape == x.shape
    if op.startswith("swap"):
        assert torch.equal(y, donor)
    else:
        start, end = sound_span(x)
        assert not y[:start].any() and not y[end:].any()


@pytest.mark.parametrize("op", sorted(VIDEO_OPS))
def test_video_operators_keep_frame_count_and_time_metadata(op):
    """Video items are never padded (a clip keeps its own sampled frames; temporal pooling repeats the last
    frame on the model side, after corruption, so at the same place). A family video's ``sampled_fps`` stays on
    the corrupted clip, so its processor places the frames in time as the original's."""
    g = torch.Generator().manual_seed(0)
    x, donor = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    x.sampled_fps, donor.sampled_fps = 2.5, 2.5
    y = VIDEO_OPS[op]([x], torch.Generator().manual_seed(1), donor=[donor])[0]
    assert y.shape == x.shape
    assert getattr(y, "sampled_fps", None) == 2.5, f"{op} dropped the clip's sampled_fps"


def test_shuffle_order_keeps_each_markers_shape():
    """Images of different sizes (a pretrained family's) are permuted among those of the same shape, so every
    marker keeps its token count; same-shaped images are permuted as before."""
    g = torch.Generator().manual_seed(0)
    items = [torch.rand(3, 8, 8, generator=g), torch.rand(3, 16, 8, generator=g), torch.rand(3, 8, 8, generator=g),
             torch.rand(3, 16, 8, generator=g), torch.rand(3, 4, 4, generator=g)]
    for seed in range(10):
        out = MULTI_IMAGE_OPS["shuffle_order"](items, torch.Generator().manual_seed(seed))
        assert [o.shape for o in out] == [x.shape for x in items]
        assert any(o is not x for o, x in zip(out, items))
    same = [torch.rand(3, 8, 8, generator=g) for _ in range(4)]
    out = MULTI_IMAGE_OPS["shuffle_order"](same, torch.Generator().manual_seed(5))
    want = [same[i] for i in _derangement(4, torch.Generator().manual_seed(5))]
    assert all(o is w for o, w in zip(out, want))


def test_adapter_corrupt_keeps_padding(tmp_path):
    """Through the audio adapter as training uses it: decoded, padded to max_seconds, then corrupted."""
    from modalities import AudioAdapter
    from conftest import ASSETS
    from test_audio import _members

    adapter = AudioAdapter(encoder=str(ASSETS / "tiny-audio"), max_seconds=2.0)
    flac = _members(ASSETS / "data" / "audio" / "val-000.tar", lambda s: True)["flac"]
    x = adapter.preprocess(adapter.decode(flac, "flac"))
    for op in TIME_OPS:
        assert_padding_kept(x, adapter.corrupt([x], op, torch.Generator().manual_seed(0))[0], op)
