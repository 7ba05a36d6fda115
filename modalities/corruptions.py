"""Corruption operators: the modality-specific negatives (mDPO's conditional term and its kin).

Each operator maps one sample's items of one modality (a list of preprocessed tensors) to corrupted
items of the same shapes and dtypes, so the corrupted prompt takes exactly the same token positions.
Randomness comes only from the ``torch.Generator`` passed in, so a seed gives the same output.
Operators marked ``@uses_donor`` take another sample's items from the same batch (``swap``).

Where this departs from the sources (``docs/methods.md``, negatives by modality):
- ``drop_segment`` (TPO) and ``downsample`` keep the frame count: the remaining frames are re-sampled
  to fill it, so the token count does not change.
- ``drop_one`` (multi-image) replaces one image by a blank one instead of removing its marker.
- ``diffusion_noise`` works in the encoder's normalised pixel space (SigLIP's is [-1, 1], the space
  DDPM noise is defined in) with POVID's schedule: β = sigmoid(linspace(-6, 6, 1000)) scaled to
  [1e-5, 5e-3].

Padding rule: an operator corrupts the content, never the padding. A waveform is zero-padded to the
adapter's length, so the audio operators act on the sound's span only (first to last non-zero sample,
``sound_span``) and leave the silence before and after it where it was: reversing a padded 1 s clip in a 2 s
window whole would move the sound into the second half, a position cue the model learns instead of the
content, and noise over the padding would tell silence from content. The span's ends stay non-zero, so an
encoder that reads a clip's length from its last non-zero sample (AST) sees the original's length.
Operators keep a tensor's attributes (a family video's ``sampled_fps``), so a corrupted clip is placed in
time as the original. ``shuffle_order`` permutes images of the same shape among themselves, so every
marker keeps its token count.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import uses_donor

Items = list[torch.Tensor]


def _uniform(rng: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=rng).item()


def _randint(rng: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (), generator=rng))


def _derangement(n: int, rng: torch.Generator) -> torch.Tensor:
    """A random permutation that moves at least one element (n > 1)."""
    while True:
        perm = torch.randperm(n, generator=rng)
        if n < 2 or not torch.equal(perm, torch.arange(n)):
            return perm


# ---- images: [3, H, W] ----
def crop_keep(x: torch.Tensor, rng, scale_min: float = 0.01, scale_max: float = 0.2) -> torch.Tensor:
    """mDPO: keep a random 1-20 % of the area (aspect 3/4-4/3) and resize back."""
    _, h, w = x.shape
    area = _uniform(rng, scale_min, scale_max) * h * w
    ratio = math.exp(_uniform(rng, math.log(3 / 4), math.log(4 / 3)))
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    top, left = _randint(rng, h - ch + 1), _randint(rng, w - cw + 1)
    crop = x[:, top:top + ch, left:left + cw]
    return F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def gaussian_blur(x: torch.Tensor, rng, sigma: float = 3.0) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[0]
    y = F.conv2d(F.pad(x[None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def pixelate(x: torch.Tensor, rng, factor: int = 8) -> torch.Tensor:
    _, h, w = x.shape
    small = F.adaptive_avg_pool2d(x[None], (max(1, h // factor), max(1, w // factor)))
    return F.interpolate(small, size=(h, w), mode="nearest")[0]


def diffusion_noise(x: torch.Tensor, rng, t: int = 500, steps: int = 1000) -> torch.Tensor:
    """POVID / SeVa: forward diffusion q(x_t | x_0) at step t."""
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    alpha_bar = torch.cumprod(1 - betas, 0)[t - 1].item()
    noise = torch.randn(x.shape, generator=rng, dtype=x.dtype)
    return math.sqrt(alpha_bar) * x + math.sqrt(1 - alpha_bar) * noise


def null(x: torch.Tensor, rng, value: float = -1.0) -> torch.Tensor:
    """A blank image (V-DPO's null image); -1 is black in SigLIP's normalised space."""
    return torch.full_like(x, value)


# ---- video: [frames, 3, H, W] ----
def shuffle_frames(x: torch.Tensor, rng) -> torch.Tensor:
    return x[_derangement(x.shape[0], rng)]


def reverse(x: torch.Tensor, rng) -> torch.Tensor:
    """Time reversal of a clip's frames (audio: ``audio_reverse``, which keeps the padding in place)."""
    return x.flip(0)


def static(x: torch.Tensor, rng) -> torch.Tensor:
    """One random frame repeated (a frozen video)."""
    return x[_randint(rng, x.shape[0])].expand_as(x).clone()


def drop_segment(x: torch.Tensor, rng, fraction: float = 0.5) -> torch.Tensor:
    """TPO-style: remove a contiguous span, re-sample the rest to the original frame count."""
    n = x.shape[0]
    span = min(n - 1, max(1, round(fraction * n)))
    start = _randint(rng, n - span + 1)
    keep = torch.cat([torch.arange(start), torch.arange(start + span, n)])
    return x[keep[torch.linspace(0, len(keep) - 1, n).round().long()]]


def downsample(x: torch.Tensor, rng, stride: int = 4) -> torch.Tensor:
    """Sparse frames: every ``stride``-th frame, each held for ``stride`` frames."""
    n = x.shape[0]
    return x[(torch.arange(n) // stride * stride).clamp(max=n - 1)]


# ---- audio: waveform [samples], zero-padded: the operators act on the sound's span only ----
def sound_span(x: torch.Tensor) -> tuple[int, int]:
    """``(start, end)``: the first non-zero sample and one past the last one of a waveform; ``(0, 0)`` for
    silence. What lies outside is padding (or digital silence, which an encoder cannot tell from it)."""
    nz = torch.nonzero(x).flatten()
    return (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)


def _on_span(x: torch.Tensor, fn) -> torch.Tensor:
    start, end = sound_span(x)
    if end - start < 2:
        return x.clone()
    out = x.clone()
    out[start:end] = fn(x[start:end])
    return out


def noise(x: torch.Tensor, rng, snr_db: float = 0.0) -> torch.Tensor:
    """Add white noise at a target signal-to-noise ratio (dB) relative to the sound's mean power, over the
    sound's span (the padding stays silent)."""
    def add(c: torch.Tensor) -> torch.Tensor:
        power = c.pow(2).mean().clamp(min=1e-10)
        sigma = torch.sqrt(power / 10 ** (snr_db / 10))
        return c + sigma * torch.randn(c.shape, generator=rng, dtype=c.dtype)
    return _on_span(x, add)


def audio_reverse(x: torch.Tensor, rng) -> torch.Tensor:
    """The sound reversed in time inside its span: the silence before and after it stays where it was."""
    return _on_span(x, lambda c: c.flip(-1))


def _cut_points(c: torch.Tensor, segments: int, rng) -> list[int]:
    """Up to ``segments - 1`` cut points inside ``c``, each near an equal division and between two non-zero
    samples, so every piece starts and ends on a non-zero sample."""
    n = len(c)
    ok = torch.nonzero((c[:-1] != 0) & (c[1:] != 0)).flatten() + 1  # cut before index i: c[i-1], c[i] non-zero
    if len(ok) == 0:
        return []
    cuts = []
    for k in range(1, segments):
        target = k * n / segments + (torch.rand((), generator=rng).item() - 0.5) * n / (2 * segments)
        cuts.append(int(ok[(ok - target).abs().argmin()]))
    return sorted(set(cuts))


def shuffle_segments(x: torch.Tensor, rng, segments: int = 4) -> torch.Tensor:
    """The sound cut into ``segments`` pieces of about equal length (cuts between non-zero samples, placed at
    random within a quarter of a piece of the equal division) and put in another order, inside its span."""
    def shuffle(c: torch.Tensor) -> torch.Tensor:
        cuts = _cut_points(c, segments, rng)
        if not cuts:
            return c.flip(-1)
        pieces = list(c.tensor_split(cuts))
        return torch.cat([pieces[i] for i in _derangement(len(pieces), rng)])
    return _on_span(x, shuffle)


def shift(x: torch.Tensor, rng, min_fraction: float = 0.25, max_fraction: float = 0.75) -> torch.Tensor:
    """The sound rotated in time inside its span by a fraction of its length drawn uniformly in
    [``min_fraction``, ``max_fraction``] (what ran off the end comes back at the start): the same sounds,
    the span and its silence kept, the order of events changed. Cut between two non-zero samples."""
    def roll(c: torch.Tensor) -> torch.Tensor:
        ok = torch.nonzero((c[:-1] != 0) & (c[1:] != 0)).flatten() + 1
        if len(ok) == 0:
            return c.flip(-1)
        target = _uniform(rng, min_fraction, max_fraction) * len(c)
        k = int(ok[(ok - target).abs().argmin()])
        return torch.cat([c[k:], c[:k]])
    return _on_span(x, roll)


def mute(x: torch.Tensor, rng) -> torch.Tensor:
    return torch.zeros_like(x)


def keep_attributes(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Copy the Python attributes a preprocessed item carries (e.g. a family video's ``sampled_fps``) onto
    its corrupted version, so the processor places it in time as the original."""
    extra = getattr(src, "__dict__", None)
    if extra:
        out.__dict__.update(extra)
    return out


def per_item(op):
    """Lift a one-item operator to a sample's list of items."""
    def lifted(items: Items, rng, donor: Items | None = None, **params) -> Items:
        return [keep_attributes(op(x, rng, **params), x) for x in items]
    lifted.op = op
    return lifted


# ---- list-level operators ----
@uses_donor
def swap(items: Items, rng, donor: Items | None = None) -> Items:
    """Another sample's media in place of this one's (item by item)."""
    if donor is None or [d.shape for d in donor] != [x.shape for x in items]:
        raise ValueError("swap needs another sample in the batch with media of the same shapes")
    return [keep_attributes(d.clone(), d) for d in donor]


def shuffle_order(items: Items, rng, donor: Items | None = None) -> Items:
    """Multi-image: the images in another order (the markers stay). Images are permuted among those of the same
    shape, so each marker keeps its token count (a pretrained family's images come at their own sizes); when no
    two images share a shape, all of them are permuted (the token counts then move with the images)."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(items):
        groups.setdefault(tuple(x.shape), []).append(i)
    if len(groups) == 1 or all(len(g) < 2 for g in groups.values()):
        return [items[i] for i in _derangement(len(items), rng)]
    order = list(range(len(items)))
    for g in groups.values():
        if len(g) > 1:
            for slot, j in zip(g, _derangement(len(g), rng).tolist()):
                order[slot] = g[j]
    return [items[i] for i in order]


@uses_donor
def swap_one(items: Items, rng, donor: Items | None = None) -> Items:
    """Multi-image: one image replaced by an image of another sample."""
    if not donor:
        raise ValueError("swap_one needs another sample in the batch")
    out = list(items)
    i = _randint(rng, len(items))
    candidates = [d for d in donor if d.shape == items[i].shape]
    if not candidates:
        raise ValueError("swap_one found no donor image of the same shape")
    pick = candidates[_randint(rng, len(candidates))]
    out[i] = keep_attributes(pick.clone(), pick)
    return out


def drop_one(items: Items, rng, donor: Items | None = None, value: float = -1.0) -> Items:
    """Multi-image: one image blanked out."""
    out = list(items)
    i = _randint(rng, len(items))
    out[i] = keep_attributes(torch.full_like(items[i], value), items[i])
    return out


IMAGE_OPS = {"crop_keep": per_item(crop_keep), "gaussian_blur": per_item(gaussian_blur),
             "pixelate": per_item(pixelate), "diffusion_noise": per_item(diffusion_noise),
             "null": per_item(null), "swap": swap}
MULTI_IMAGE_OPS = {**IMAGE_OPS, "shuffle_order": shuffle_order, "swap_one": swap_one, "drop_one": drop_one}
VIDEO_OPS = {"shuffle_frames": per_item(shuffle_frames), "reverse": per_item(reverse), "static": per_item(static),
             "freeze_video": per_item(static), "drop_segment": per_item(drop_segment),
             "downsample": per_item(downsample), "swap": swap}
AUDIO_OPS = {"noise": per_item(noise), "mute": per_item(mute), "mute_audio": per_item(mute),
             "reverse": per_item(audio_reverse), "shuffle_segments": per_item(shuffle_segments),
             "shift": per_item(shift), "swap": swap, "swap_audio": swap}
