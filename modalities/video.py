"""Video adapter: decord decodes only the sampled frames, already at the encoder's resolution; frames
go through the vision tower; optional temporal pooling (mean over consecutive frames) and spatial
pooling bound the token count.

Sampling is by time, from each frame's timestamp (decord's ``get_frame_timestamp``), so a variable-frame-rate
clip (a phone recording that drops to a few frames per second in the dark) is sampled evenly in time, not
by frame number: ``num_frames`` at the centres of equal segments of the clip's duration, or, with ``fps``,
one frame every ``1 / fps`` seconds from the start, at most ``num_frames``. A constant-rate clip gives the
same frames as sampling by index did. With ``keyframes=True`` a sample moves to a keyframe inside its
segment when there is one: one frame is decoded instead of every frame since the previous keyframe, which is
what makes long clips slow (``tools/bench_decode.py``).

A clip whose mp4/mov header declares more frames than its bytes hold (a cut-off download) is refused when
fewer than half of them are there; decord would otherwise sample what is left, repeating frames. Decoder
errors are reported in words first, decord's own text shortened after them.

Clips may yield different frame counts, so a batch is a dict of all frames concatenated plus per-item counts,
and ``forward`` returns one ``[tokens_i, hidden]`` per item.

Time: by default a frame's tokens carry nothing that says where the frame is in the clip (a reversed clip
is the same tokens in another order). ``frame_deltas`` (each frame's change since the previous one, added
or concatenated) and ``time_embedding`` (a sinusoidal or learned code of the frame's index, added before
the projector) mark it; ``docs/methods.md``, "Time in video", has what each does and what they measure on
a task decided by the order of frames (``tools/make_order_data.py``).
"""
from __future__ import annotations

import io
import math
import re

import numpy as np
import torch
from torch import nn

from .base import BadSample, ModalityAdapter, freeze, mlp_projector
from .corruptions import VIDEO_OPS
from .preview import FRAME, contact_sheet
from .vision import VisionTower, to_pixels

#: a clip with fewer than this share of the frames its header declares is refused as truncated
MIN_PRESENT = 0.5


def sample_indices(num_available: int, num_frames: int, avg_fps: float, fps: float | None) -> np.ndarray:
    """Frame indices by frame number: segment centres, or every ``avg_fps / fps``-th frame. Used when a clip has
    no usable timestamps; for a constant-rate clip ``sample_by_time`` gives the same indices."""
    if fps:
        step = max(avg_fps / fps, 1.0)
        idx = np.arange(0, num_available, step)[:num_frames]
    else:
        idx = (np.arange(num_frames) + 0.5) * num_available / num_frames
    return np.minimum(idx.astype(np.int64), num_available - 1)


def sample_targets(start: float, end: float, num_frames: int, fps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The times to sample in ``[start, end)`` seconds and half the width of the window each stands for:
    the centres of ``num_frames`` equal segments, or with ``fps`` every ``1 / fps`` seconds from ``start``."""
    duration = end - start
    if fps:
        count = max(int(math.ceil(duration * fps - 1e-9)), 1)
        return start + np.arange(count) / fps, np.full(count, 0.5 / fps)
    return start + (np.arange(num_frames) + 0.5) * duration / num_frames, np.full(num_frames, 0.5 * duration / num_frames)


def sample_by_time(starts: np.ndarray, end: float, num_frames: int, fps: float | None = None,
                   keyframes: np.ndarray | None = None) -> np.ndarray:
    """Frame indices sampled evenly in time. ``starts``: each frame's presentation time (seconds, increasing);
    ``end``: when the last frame ends. A sample takes the frame shown at its target time. With ``fps`` the
    targets run every ``1 / fps`` seconds and a frame is never taken twice (a clip slower than ``fps`` gives
    each of its frames once), at most ``num_frames``.

    ``keyframes`` (indices): a sample whose window (its segment, or ``1 / fps`` around its time) holds a keyframe
    takes the keyframe nearest its target instead, so decoding it needs no earlier frame."""
    starts = np.asarray(starts, dtype=np.float64)
    n = len(starts)
    targets, half = sample_targets(float(starts[0]), float(end), num_frames, fps)
    # a tolerance of 1 % of a frame: a target on a frame's start (constant rate) falls on that frame
    eps = 0.01 * (float(end) - float(starts[0])) / n
    idx = np.clip(np.searchsorted(starts, targets + eps, side="right") - 1, 0, n - 1)
    if keyframes is not None and len(keyframes):
        keys = np.asarray(sorted(set(int(k) for k in keyframes if 0 <= k < n)), dtype=np.int64)
        if len(keys):
            kt = starts[keys]
            for i, (t, h) in enumerate(zip(targets, half)):
                near = np.abs(kt - t)
                j = int(np.argmin(near))
                if t - h - eps <= kt[j] < t + h - eps:
                    idx[i] = keys[j]
    if fps:
        idx = np.array(list(dict.fromkeys(idx.tolist())), dtype=np.int64)[:num_frames]  # in order, each once
    return idx


def decode_size(size: int | None) -> int | None:
    """decord2 (FFmpeg 8) fails to scale at decode time to some small widths (``from_size == to_size``; e.g.
    16, 24, 32, 48, 96, 144 in docs/toolchain.md) and has worked for every multiple of 64 tried. Decode at
    the target rounded up to 64, and resize the rest on the CPU."""
    return -(-size // 64) * 64 if size else None


# ---- the mp4/mov header: how many frames the file says it has, and how many its bytes hold ----

def _boxes(data: bytes, start: int, end: int):
    """ISO base media boxes in ``data[start:end]`` -> ``(type, payload start, payload end)``; stops at a box
    that runs past ``end`` (a cut-off file)."""
    pos = start
    while pos + 8 <= end:
        size, kind, head = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8], 8
        if size == 1:
            if pos + 16 > end:
                return
            size, head = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, *path: bytes):
    for kind, a, b in _boxes(data, start, end):
        if kind == path[0]:
            return (a, b) if len(path) == 1 else _child(data, a, b, *path[1:])
    return None


def mp4_video_track(data: bytes) -> dict | None:
    """The first video track of an mp4/mov from its header: ``{"frames": declared frame count, "present":
    frames whose bytes are all in ``data``, "width", "height"}``; None when ``data`` is no ISO file with a
    complete ``moov`` box, has no video track, or is fragmented (its sample tables are empty)."""
    if data[4:8] not in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return None
    moov = _child(data, 0, len(data), b"moov")
    if moov is None:
        return None
    for kind, a, b in _boxes(data, *moov):
        if kind != b"trak":
            continue
        hdlr = _child(data, a, b, b"mdia", b"hdlr")
        if hdlr is None or data[hdlr[0] + 8:hdlr[0] + 12] != b"vide":
            continue
        stbl = _child(data, a, b, b"mdia", b"minf", b"stbl")
        if stbl is None:
            return None
        box = {k: _child(data, *stbl, k) for k in (b"stsd", b"stsz", b"stsc", b"stco", b"co64")}
        if box[b"stsz"] is None or box[b"stsc"] is None or (box[b"stco"] or box[b"co64"]) is None:
            return None
        p = box[b"stsz"][0]
        uniform, count = int.from_bytes(data[p + 4:p + 8], "big"), int.from_bytes(data[p + 8:p + 12], "big")
        if count == 0:
            return None
        sizes = (np.full(count, uniform, np.int64) if uniform else
                 np.frombuffer(data, ">u4", count, p + 12).astype(np.int64))
        p = box[b"stsc"][0]
        runs = np.frombuffer(data, ">u4", 3 * int.from_bytes(data[p + 4:p + 8], "big"), p + 8).reshape(-1, 3)
        if box[b"co64"] is not None:
            p = box[b"co64"][0]
            offsets = np.frombuffer(data, ">u8", int.from_bytes(data[p + 4:p + 8], "big"), p + 8).astype(np.int64)
        else:
            p = box[b"stco"][0]
            offsets = np.frombuffer(data, ">u4", int.from_bytes(data[p + 4:p + 8], "big"), p + 8).astype(np.int64)
        # samples per chunk, chunk by chunk, from the runs of the sample-to-chunk table (first chunk is 1-based)
        firsts = runs[:, 0].astype(np.int64) - 1
        lengths = np.diff(np.append(firsts, len(offsets)))
        per_chunk = np.repeat(runs[:, 1].astype(np.int64), np.maximum(lengths, 0))[: len(offsets)]
        chunk = np.repeat(np.arange(len(per_chunk)), per_chunk)[:count]
        ends = np.cumsum(sizes[: len(chunk)])
        chunk_start = np.concatenate([[0], np.cumsum(per_chunk)])[chunk]
        before = np.concatenate([[0], ends])[chunk_start]  # bytes of the earlier samples of the same chunk
        sample_end = offsets[chunk] + ends - before
        width = height = 0
        if box[b"stsd"] is not None:
            e = box[b"stsd"][0] + 8  # the first sample entry; a visual entry has width, height at +32
            width, height = (int.from_bytes(data[e + 32:e + 34], "big"), int.from_bytes(data[e + 34:e + 36], "big"))
        return {"frames": count, "present": int((sample_end <= len(data)).sum()), "width": width, "height": height}
    return None


# ---- decoder errors in words ----

_NOISE = [re.compile(r"\[\d\d:\d\d:\d\d\] ?"),                  # decord's log timestamps
          re.compile(r"(/[\w.+-]+)+\.(cc|cpp|h):\d+: ?"),          # source file and line
          re.compile(r"\b[\w.]+\.(cc|cpp|h):\d+: ?"),
          re.compile(r"Check failed: .*?\(-?\d+ vs\. -?\d+\) ?"),  # the failed C++ expression
          re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>"),
          re.compile(r"Stack trace.*", re.S)]

# library text -> what it means, for a person
_VERDICTS = [
    ("find video stream", "no readable video stream (corrupt or unsupported container)"),
    ("st_nb >= 0", "no readable video stream (corrupt or unsupported container)"),
    ("Error reading", "not a container FFmpeg can read (empty, corrupt, or not a video)"),
    ("Cannot create buffer source", "the video stream's header is damaged (no frame size, pixel format or frames)"),
    ("Error sending packet", "frame data is damaged or cut off"),
    ("from_size == to_size", "the decoder cannot scale this clip to the requested size"),
    ("Invalid data found", "not a container FFmpeg can read (corrupt, cut off, or not media)"),
    ("find audio stream", "no audio stream"),
]


def decoder_text(e: BaseException, limit: int = 120) -> str:
    """A decoder exception's own text, short: no timestamps, source lines, C++ expressions or quoted input
    bytes (decord quotes the whole input when it cannot open bytes)."""
    msg = " ".join(str(e).split())
    if "ERROR opening: " in msg:  # decord quotes the input bytes here: keep only its verdict
        msg = "ERROR opening: " + msg.rsplit(", ", 1)[-1]
    for pattern in _NOISE:
        msg = pattern.sub("", msg)
    msg = msg.strip(" :")
    if len(msg) > limit:
        msg = "..." + msg[-limit:]
    return msg


def video_error(e: BaseException) -> str:
    """What went wrong, in words, then decord's text: ``frame data is damaged or cut off [decord: ...]``."""
    text = decoder_text(e)
    verdict = next((words for key, words in _VERDICTS if key in str(e)), None)
    lib = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"{verdict} [{lib}]" if verdict else lib


# ---- reading ----

def _truncation(info: dict | None) -> str:
    if info is None or info["present"] >= info["frames"]:
        return ""
    present = info["present"]
    return (f"the file is cut off: its header declares {info['frames']} frames but only {present} "
            f"{'is' if present == 1 else 'are'} in its bytes")


def read_frames(data: bytes, num_frames: int, size: int | None = None, fps: float | None = None, *,
                upscale: bool = True, keyframes: bool = False, with_rate: bool = False):
    """Decode the sampled frames of a clip from its bytes, scaled to about ``size`` square while decoding:
    uint8 ``[frames, H, W, 3]``. Frames are sampled by time (``sample_by_time``). ``upscale=False``: a clip
    no larger than the decode size (known from an mp4/mov header) is decoded at its own size, and the caller
    resizes the few kept frames; FFmpeg would otherwise scale up every frame it decodes, kept or not.
    ``keyframes``: see ``sample_by_time``. ``with_rate``: return ``(frames, rate)``, the sampled frames per second
    of clip time (``fps`` when set, else the frames over the clip's duration), which a processor that places
    frames in time needs (Qwen2-VL's temporal positions)."""
    import decord

    info = mp4_video_track(data)
    cut = _truncation(info)
    if info is not None and cut and info["present"] < MIN_PRESENT * info["frames"]:
        raise BadSample(f"cannot decode video frames: {cut} (under {MIN_PRESENT:.0%}), so the clip is refused "
                        "(sampling what is left would repeat those frames)")
    size = decode_size(size)
    if size and not upscale and info is not None and 0 < max(info["width"], info["height"]) <= size:
        size = None  # never scale up while decoding
    try:
        kw = {"width": size, "height": size} if size else {}
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1, **kw)
        n = len(vr)
    except Exception as e:  # decord raises DECORDError / RuntimeError on bad streams
        raise BadSample(f"cannot open video: {video_error(e)}") from None
    if n == 0:
        raise BadSample("video has 0 frames")
    idx = _sample(vr, n, num_frames, fps, keyframes)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()
    except Exception as e:
        extra = f"; {cut}" if cut else ""
        raise BadSample(f"cannot decode video frames: {video_error(e)}{extra}") from None
    if not with_rate:
        return frames
    duration = n / (vr.get_avg_fps() or 1.0)
    return frames, float(fps) if fps else len(idx) / duration


def _sample(vr, n: int, num_frames: int, fps: float | None, keyframes: bool) -> np.ndarray:
    """Indices by time from the frames' timestamps; by frame number when the timestamps are unusable."""
    try:
        ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        starts, end = ts[:, 0], float(ts[:, 1].max())
        if end <= starts[-1]:  # no usable end time: the last frame lasts as long as the average one
            end = starts[-1] + ((starts[-1] - starts[0]) / (n - 1) if n > 1 else 1.0)
        usable = bool(np.isfinite(ts).all() and (np.diff(starts) >= 0).all() and end > starts[0])
    except Exception:
        usable = False
    if not usable:
        return sample_indices(n, num_frames, vr.get_avg_fps() or 1.0, fps)
    keys = None
    if keyframes:
        try:
            keys = np.asarray(vr.get_key_indices(), dtype=np.int64)
        except Exception:
            keys = None
    return sample_by_time(starts, end, num_frames, fps, keys)


FRAME_DELTAS = ("none", "add", "concat")
TIME_EMBEDDINGS = ("none", "sinusoidal", "learned")


def sinusoid(steps: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``[steps, dim]`` sinusoidal codes of the indices ``0 .. steps - 1`` (Vaswani et al. 2017): sines in the
    even dimensions, cosines in the odd ones, wavelengths from 2 pi to ``base`` * 2 pi; values in [-1, 1]."""
    pos = torch.arange(steps, dtype=torch.float32)[:, None]
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(steps, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class VideoAdapter(ModalityAdapter):
    placeholder = "<video>"
    operators = VIDEO_OPS
    reliance_operator = "static"
    extensions = ("mp4", "webm", "mkv", "avi", "mov")

    def __init__(
        self,
        encoder: str = "assets/tiny-siglip",
        num_frames: int = 8,
        fps: float | None = None,
        temporal_pool: int = 1,
        spatial_pool: int = 1,
        projector_depth: int = 2,
        freeze_encoder: bool = True,
        freeze_projector: bool = False,
        trust_remote_code: bool = False,
        keyframes: bool = False,
        frame_deltas: str = "none",
        time_embedding: str = "none",
    ):
        """
        Args:
            encoder: Hugging Face vision encoder used on every frame (local directory or hub id).
            num_frames: frames sampled uniformly in time over the clip (the cap when ``fps`` is set).
            fps: sample at this rate (by time) from the start of the clip instead of uniformly.
            temporal_pool: average this many consecutive frames' features into one.
            spatial_pool: average-pool each frame's patch grid by this factor.
            projector_depth: number of Linear layers in the MLP projector.
            freeze_encoder: keep the vision encoder's weights fixed.
            freeze_projector: keep the projector's weights fixed.
            trust_remote_code: allow custom code from the encoder's repository (off unless you set it).
            keyframes: let a sample move to a keyframe inside its segment (or within ``1 / fps`` of its time),
                so it decodes one frame instead of every frame since the previous keyframe: several times
                faster on long clips (``tools/bench_decode.py``), frames no longer at the exact segment centres.
            frame_deltas: give each frame's tokens what changed since the previous sampled frame (the change of
                their encoder features; none for the first frame), so the direction of time reaches the LM in
                every frame's own tokens: ``none``; ``add`` (features + change, same projector);
                ``concat`` (features and change side by side, a projector twice as wide at its input). For
                questions whose answer is in the order of frames (``docs/methods.md``, "Time in video").
            time_embedding: a code of each frame's index among the sampled frames added to its encoder features,
                before the projector: ``none``; ``sinusoidal`` (fixed, as a transformer's positions);
                ``learned`` (one trained vector per index, starting at zero, trained with the projector). The
                index is the frame's place among the sampled frames (after ``temporal_pool``): with ``fps``
                it counts ``1 / fps`` seconds from the start (while the clip has a new frame for every
                sample), uniformly sampled the clip's equal segments.
        """
        super().__init__()
        if num_frames < 1 or temporal_pool < 1:
            raise ValueError("num_frames and temporal_pool must be >= 1")
        if frame_deltas not in FRAME_DELTAS:
            raise ValueError(f"frame_deltas must be one of {FRAME_DELTAS}, not {frame_deltas!r}")
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, not {time_embedding!r}")
        self.frame_deltas, self.time_embedding = frame_deltas, time_embedding
        self.tower = VisionTower(encoder, spatial_pool, trust_remote_code)
        self.num_frames, self.fps, self.temporal_pool = num_frames, fps, temporal_pool
        self.keyframes = keyframes
        self.projector_depth = projector_depth
        self.freeze_projector = freeze_projector
        freeze(self.tower, freeze_encoder)
        self.projector = None

    def bind(self, lm_hidden_size: int) -> None:
        width = self.tower.hidden_size * (2 if self.frame_deltas == "concat" else 1)
        self.projector = mlp_projector(width, lm_hidden_size, self.projector_depth)
        freeze(self.projector, self.freeze_projector)
        if self.time_embedding == "learned":
            # a plain parameter, not a child module: a frozen reference copy shares the policy's frozen child modules
            # (all but ``projector``) and must keep its own frame times. Zeros: no random draw, so the projector and
            # everything built after it start as without the option
            self.frame_time = nn.Parameter(torch.zeros(self.max_time_steps, self.tower.hidden_size),
                                           requires_grad=not self.freeze_projector)

    @property
    def max_time_steps(self) -> int:
        """The most frames a clip brings to the LM: ``num_frames`` after temporal pooling."""
        return math.ceil(self.num_frames / self.temporal_pool)

    def encoder_frozen(self) -> bool:
        """As the base class, with the learned frame times on the projector side (``project`` adds them)."""
        trained = {id(p) for p in self.projector.parameters()} if self.projector is not None else set()
        if self.time_embedding == "learned":
            trained.add(id(self.frame_time))
        return not any(p.requires_grad for p in self.parameters() if id(p) not in trained)

    def add_time(self, clip: torch.Tensor) -> torch.Tensor:
        """One clip's features ``[frames * tokens, width]`` plus each (pooled) frame's time code on its first
        ``hidden`` dimensions (the features; with ``frame_deltas: concat`` the changes that follow them get none)."""
        frames = clip.view(-1, self.tower.tokens_per_image, clip.shape[-1])  # [frames, tokens, width]
        hidden = self.tower.hidden_size
        if self.time_embedding == "learned":
            if len(frames) > len(self.frame_time):
                raise ValueError(f"a clip of {len(frames)} frames (after temporal_pool) but learned frame times for "
                                 f"{len(self.frame_time)}: num_frames={self.num_frames} bounds what a clip may bring")
            codes = self.frame_time[: len(frames)].to(clip.dtype)
        else:
            codes = sinusoid(len(frames), hidden).to(clip)
        codes = nn.functional.pad(codes, (0, clip.shape[-1] - hidden))[:, None]  # zeros over the changes
        return (frames + codes).flatten(0, 1)

    def decode(self, data: bytes, ext: str) -> np.ndarray:
        # never scaled up while decoding: preprocess resizes the kept frames
        return read_frames(data, self.num_frames, self.tower.image_size, self.fps, upscale=False,
                           keyframes=self.keyframes)

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        frames = raw
        if frames.shape[1:3] != (self.tower.image_size,) * 2:  # decoders that ignore the size hint
            from PIL import Image
            s = self.tower.image_size
            frames = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.Resampling.BICUBIC))
                               for f in frames])
        return to_pixels(frames, self.tower.mean, self.tower.std)

    def num_tokens(self, item: torch.Tensor) -> int:
        return math.ceil(item.shape[0] / self.temporal_pool) * self.tower.tokens_per_image

    def preview(self, data: bytes, ext: str):
        """The frames training samples (``num_frames``, ``fps``), decoded at their own resolution and laid
        out as a contact sheet, 8 to a row, each scaled to fit a 112-pixel square."""
        from PIL import Image

        frames = read_frames(data, self.num_frames, None, self.fps, keyframes=self.keyframes)
        return contact_sheet([Image.fromarray(f) for f in frames], FRAME)

    def collate(self, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.cat(items), "frames": torch.tensor([len(x) for x in items])}

    def encode(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feats = self.tower(batch["pixels"])  # [all frames, tokens, encoder hidden]
        clips = []
        for clip in feats.split(batch["frames"].tolist()):
            if self.frame_deltas != "none":  # before pooling: a pooled frame keeps the mean change inside it
                delta = torch.cat([torch.zeros_like(clip[:1]), clip[1:] - clip[:-1]])
                clip = clip + delta if self.frame_deltas == "add" else torch.cat([clip, delta], -1)
            if self.temporal_pool > 1:
                pad = -len(clip) % self.temporal_pool  # repeat the last frame to fill the last group
                clip = torch.cat([clip, clip[-1:].expand(pad, -1, -1)]) if pad else clip
                clip = clip.view(-1, self.temporal_pool, *clip.shape[1:]).mean(1)
            clips.append(clip.flatten(0, 1))
        return clips

    def project(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        # pool first, project once: the projector runs on the pooled tokens only
        if self.time_embedding != "none":
            clips = [self.add_time(c) for c in clips]
        return list(self.projector(torch.cat(clips)).split([len(c) for c in clips]))

    def export(self, directory) -> dict:
        return {"encoder": self.tower.save(directory / "encoder")}
