"""Look at a shard set the way training will, before training: counts, modalities, token lengths, bad
samples, one sample drawn into a PNG, and the opt-in pre-flight gate.

    python -m anyalign.data.inspect SHARDS... [--config configs/x.yaml | --lm assets/tiny-lm]
                                    [--render KEY --out sample.png] [--json] [--workers N]

Every sample goes through the DataModule's own ``decode`` and ``tokenize`` stages, bound to the model the
config builds (the CLI's ``AlignModule``; with ``--lm``, that LM with default image and video adapters).
So a bad sample's reason is exactly the one training would report, and prompt lengths count media as the
model expands them. Unpairing and batching are left out: they never reject a sample, and unpairing would
count each pair twice. ``preflight`` is the same scan as a gate, run by the DataModule before training
when ``data.preflight_max_bad_fraction`` is set.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import textwrap
from collections import Counter
from typing import Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from modalities import AudioAdapter, BadSample, ImageAdapter, VideoAdapter

from .module import Compose, PreferenceDataModule
from .pipeline import Skipped, decode, read_shards, tokenize, worker_init
from .schema import media_fields, parse_record

log = logging.getLogger("anyalign")


# ---- scanning ----
def example_stages(dm) -> list[Callable]:
    """The stages of a bound DataModule that can reject a sample: its own ``decode`` and ``tokenize``."""
    return [s for s in dm._process(1).stages if getattr(s, "func", None) in (decode, tokenize)]


def _note_members(src: Iterator, seen: dict) -> Iterator:
    for raw in src:  # raw samples pass unchanged; their member extensions are noted by (url, key)
        if not isinstance(raw, Skipped):
            seen[raw["__url__"], raw["__key__"]] = [f.rpartition(".")[2] for f in raw if not f.startswith("__")]
        yield raw


def summarize(urls: list[str], stages: list[Callable]) -> Iterator[dict]:
    """Shards -> one small record per sample (no tensors, so workers send back little)."""
    seen: dict = {}
    src = _note_members(read_shards(iter(urls)), seen)
    for stage in stages:
        src = stage(src)
    for x in src:
        if isinstance(x, Skipped):
            yield {"url": x.url, "key": x.key, "reason": x.reason, "members": seen.pop((x.url, x.key), [])}
            continue
        yield {"url": x["url"], "key": x["key"], "members": seen.pop((x["url"], x["key"]), []),
               "media": {m: len(items) for m, items in x["media"].items()},
               "tokens": {"prompt": len(x["prompt"]), **{n: len(ids) for n, ids in x["responses"].items()}}}


class _Scan(IterableDataset):
    def __init__(self, urls: list[str], stages: list[Callable]):
        self.urls, self.stages = urls, stages

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return summarize(self.urls[worker::workers], self.stages)


def _dist(xs: list[int]) -> dict | None:
    if not xs:
        return None
    s = sorted(xs)
    return {"min": s[0], "median": statistics.median(s), "p95": s[math.ceil(0.95 * len(s)) - 1], "max": s[-1]}


def scan(urls: list[str], stages: list[Callable], num_workers: int = 0, adapters: dict | None = None) -> dict:
    """Run ``stages`` over every sample of ``urls`` (``num_workers`` processes, split by shard) -> report."""
    workers = min(num_workers, len(urls))
    records = (DataLoader(_Scan(list(urls), stages), batch_size=None, num_workers=workers, worker_init_fn=worker_init)
               if workers else summarize(list(urls), stages))
    members, items, tokens, bad = Counter(), {}, {}, []
    good = unpaired = 0
    for r in records:
        members.update(r["members"])
        if "reason" in r:
            bad.append({"url": r["url"], "key": r["key"], "reason": r["reason"]})
            continue
        good += 1
        unpaired += "completion" in r["tokens"]
        for m, n in r["media"].items():
            items.setdefault(m, Counter())[n] += 1
        for name, n in r["tokens"].items():
            tokens.setdefault(name, []).append(n)
    claims: dict[str, list[str]] = {"json": ["text"]}
    for name, a in (adapters or {}).items():
        for ext in a.extensions:
            claims.setdefault(ext, []).append(name)
        for ext in a.container_extensions:
            claims.setdefault(ext, []).append(f"{name} (its track, when the prompt has {a.placeholder})")
    return {"shards": len(urls), "samples": good + len(bad), "good": good, "bad": len(bad),
            "paired": good - unpaired, "unpaired": unpaired,
            "members": {ext: {"count": n, "read_by": claims.get(ext, []) if adapters is not None else None}
                        for ext, n in sorted(members.items())},
            "media_items": {m: {str(k): v for k, v in sorted(c.items())} for m, c in sorted(items.items())},
            "tokens": {name: _dist(tokens[name]) for name in ("prompt", "chosen", "rejected", "completion")
                       if name in tokens},
            "bad_samples": bad, "bad_reasons": dict(Counter(b["reason"].split(":")[0] for b in bad).most_common())}


def format_report(r: dict) -> str:
    lines = [f"{r['shards']} shard(s), {r['samples']} samples: {r['good']} good, {r['bad']} bad; "
             f"good ones: {r['paired']} paired, {r['unpaired']} unpaired", "members by extension:"]
    for ext, m in r["members"].items():
        who = "" if m["read_by"] is None else " -> " + (", ".join(m["read_by"]) or "ignored (never decoded)")
        lines.append(f"  .{ext:8s} {m['count']:7d}{who}")
    lines.append("media items per good sample:" + ("" if r["media_items"] else " none"))
    for m, hist in r["media_items"].items():
        lines.append(f"  {m}: " + ", ".join(f"{n} item(s) in {c} sample(s)" for n, c in hist.items()))
    lines.append("tokens (prompt with media expanded)   min  median     p95     max")
    for name, d in r["tokens"].items():
        lines.append(f"  {name:34s} {d['min']:5d} {d['median']:7g} {d['p95']:7d} {d['max']:7d}")
    lines.append(f"bad samples: {r['bad']}" + (", by reason:" if r["bad"] else ""))
    lines += [f"  {n:5d}  {reason}" for reason, n in r["bad_reasons"].items()]
    lines += [f"  {b['key']} ({b['url']}): {b['reason']}" for b in r["bad_samples"][:50]]
    if r["bad"] > 50:
        lines.append(f"  ... and {r['bad'] - 50} more (--json lists all)")
    return "\n".join(lines)


def preflight(urls: list[str], stages: list[Callable], max_bad_fraction: float, num_workers: int = 0) -> dict:
    """Scan the training shards with the real stages; raise ``ValueError`` listing the first bad keys if
    more than ``max_bad_fraction`` of the samples are bad."""
    report = scan(urls, stages, num_workers)
    fraction = report["bad"] / max(report["samples"], 1)
    if fraction > max_bad_fraction:
        first = "\n".join(f"    {b['key']} ({b['url']}): {b['reason']}" for b in report["bad_samples"][:20])
        raise ValueError(f"data.preflight_max_bad_fraction={max_bad_fraction}: {report['bad']} of "
                         f"{report['samples']} training samples are bad (fraction {fraction:.4f}); first bad keys:\n"
                         f"{first}\n(python -m anyalign.data.inspect lists them all)")
    (log.warning if report["bad"] else log.info)("pre-flight: %d of %d training samples bad (%.4f <= %s)",
                                                 report["bad"], report["samples"], fraction, max_bad_fraction)
    return report


# ---- building the model and data exactly as the CLI does ----
def load(shards: list[str], config: str | None = None, lm: str = "assets/tiny-lm", max_length: int = 1024):
    """-> a PreferenceDataModule over ``shards``, bound to the model ``config`` (or ``lm``) builds."""
    if config is None:
        from ..model import MultimodalLM
        dm = PreferenceDataModule(shards, num_workers=0, max_length=max_length)
        dm.bind(MultimodalLM(lm, {"image": ImageAdapter(), "video": VideoAdapter()}))
        return dm
    from lightning.pytorch.cli import LightningCLI

    from modalities import load_entry_points

    from ..module import AlignModule
    load_entry_points()
    cli = LightningCLI(AlignModule, PreferenceDataModule, run=False, parser_kwargs={"parser_mode": "omegaconf"},
                       args=["--config", config, "--data.train_shards", json.dumps(shards),
                             "--data.val_shards", "null", "--data.num_workers", "0"])
    cli.datamodule.bind(cli.model.policy)
    return cli.datamodule


# ---- rendering one sample ----
WIDTH, PAD, THUMB, FRAME = 960, 10, 192, 112


def _font(size: int = 14):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text(text: str, color="black"):
    from PIL import Image, ImageDraw
    font = _font()
    chars = max(20, int((WIDTH - 2 * PAD) / (font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)))
    lines = [w for para in text.splitlines() or [""] for w in (textwrap.wrap(para, chars) or [""])]
    step = int(sum(font.getmetrics())) + 2
    img = Image.new("RGB", (WIDTH - 2 * PAD, step * len(lines) + 4), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((0, i * step), line, fill=color, font=font)
    return img


def _grid(pictures: list, size: int, cols: int = 8):
    """Pictures scaled to fit ``size`` square (up or down, aspect kept), ``cols`` to a row: a contact sheet."""
    from PIL import Image, ImageOps
    thumbs = [ImageOps.contain(p, (size, size)) for p in pictures]
    cols, w, h = min(cols, len(thumbs)), max(t.width for t in thumbs) + 4, max(t.height for t in thumbs) + 4
    sheet = Image.new("RGB", (cols * w, math.ceil(len(thumbs) / cols) * h), "white")
    for i, t in enumerate(thumbs):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    return sheet


def _spectrogram(wave, sr: int):
    """Log-mel spectrogram (dB, top 80 dB) as a colour image, low frequencies at the bottom."""
    import torch
    import torchaudio
    from PIL import Image, ImageOps
    mel = torchaudio.transforms.MelSpectrogram(sr, n_fft=max(16, round(0.025 * sr)),  # 25 ms windows, 10 ms hops
                                               hop_length=max(1, round(0.01 * sr)), n_mels=64)
    mel = mel(torch.as_tensor(wave, dtype=torch.float32))
    db = 10 * mel.clamp(min=1e-10).log10()
    db = db.clamp(min=float(db.max()) - 80)
    gray = ((db - db.min()) / (db.max() - db.min() + 1e-9) * 255).to(torch.uint8).flip(0).numpy()
    img = Image.fromarray(gray, "L").resize((WIDTH - 2 * PAD, 160))
    return ImageOps.colorize(img, black="#000028", white="#ffe060", mid="#b02060")


def _media(adapter, data: bytes, ext: str):
    """One media item -> a picture, chosen by the adapter's declared type."""
    from PIL import Image
    from modalities.video import read_frames
    if isinstance(adapter, ImageAdapter):
        return _grid([adapter.decode(data, ext)], THUMB)
    if isinstance(adapter, VideoAdapter):  # the frames training samples, at their own resolution
        frames = read_frames(data, adapter.num_frames, None, adapter.fps)
        return _grid([Image.fromarray(f) for f in frames], FRAME)
    if isinstance(adapter, AudioAdapter):
        wave, sr = adapter.decode(data, ext)
        return _spectrogram(wave, sr)
    return _text(f"(no preview for {type(adapter).__name__})", "gray")


def find_sample(urls: list[str], key: str) -> dict:
    why = None
    for raw in read_shards(iter(urls)):
        if isinstance(raw, Skipped):
            why = raw.reason if raw.key == key else why
        elif raw["__key__"] == key:
            return raw
    raise KeyError(f"no readable sample {key!r} in {len(urls)} shard(s)" + (f": {why}" if why else ""))


def render(dm, key: str, out: str) -> str:
    """Draw sample ``key`` of ``dm``'s training shards into a PNG: text, images, video frames, audio."""
    from PIL import Image
    raw = find_sample(dm.train_urls, key)
    result = next(Compose(example_stages(dm))(iter([raw])))
    blocks = [_text(f"{key}   ({raw['__url__']})   members: {sorted(f for f in raw if not f.startswith('__'))}")]
    if isinstance(result, Skipped):
        blocks.append(_text(f"BAD SAMPLE, training skips it: {result.reason}", "red"))
    try:
        rec = parse_record(raw.get("json", b""))
        blocks += [_text(f"[{m['role']}] {m['content']}") for m in rec["messages"]]
    except BadSample:
        rec = None
        blocks.append(_text(raw.get("json", b"").decode("utf-8", "replace")[:2000], "gray"))
    text = " ".join(m["content"] for m in rec["messages"]) if rec else ""
    for name, adapter in dm.model.adapters.items():
        try:
            fields = media_fields(raw, adapter.extensions)
            if not fields and adapter.container_extensions and adapter.placeholder in text:
                fields = media_fields(raw, adapter.container_extensions)
        except BadSample as e:
            blocks.append(_text(f"{name}: {e}", "red"))
            continue
        for i, (field, ext) in enumerate(fields):
            blocks.append(_text(f"{name} item {i}: {key}.{field}", "navy"))
            try:
                blocks.append(_media(adapter, raw[field], ext))
            except BadSample as e:
                blocks.append(_text(str(e), "red"))
    for name, color in (("chosen", "darkgreen"), ("rejected", "darkred"), ("completion", "black")):
        if rec and name in rec["responses"]:
            blocks.append(_text(f"{name.upper()}: {rec['responses'][name]}", color))
    canvas = Image.new("RGB", (WIDTH, sum(b.height + PAD for b in blocks) + PAD), "white")
    y = PAD
    for b in blocks:
        canvas.paste(b, (PAD, y))
        y += b.height + PAD
    canvas.save(out, "PNG")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m anyalign.data.inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", nargs="+", help="shard paths or brace patterns (data/train-{000..009}.tar)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="a training config: its model (LM, adapters) and data.max_length are used")
    src.add_argument("--lm", default="assets/tiny-lm", help="an LM directory or hub id, with default image + "
                                                             "video adapters (default: %(default)s)")
    ap.add_argument("--max-length", type=int, default=1024, help="with --lm: the token limit (default: %(default)s)")
    ap.add_argument("--render", metavar="KEY", help="draw this sample into --out instead of reporting")
    ap.add_argument("--out", default="sample.png", help="PNG written by --render (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=0, help="decode in this many processes (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    dm = load(args.shards, args.config, args.lm, args.max_length)
    if args.render:
        print(f"wrote {render(dm, args.render, args.out)}")
        return
    report = scan(dm.train_urls, example_stages(dm), args.workers, dict(dm.model.adapters.items()))
    print(json.dumps(report, indent=2) if args.json else format_report(report))


if __name__ == "__main__":
    main()
