"""Look at a shard set the way training will, before training: counts, modalities, token lengths, bad
samples, and one sample drawn into a PNG.

    python -m anyalign inspect SHARDS... [--config configs/x.yaml | --lm assets/tiny-lm]
                               [--render KEY --out sample.png] [--json] [--workers N]

Every sample goes through the DataModule's own ``decode`` and ``tokenize`` stages, bound to the model the
config builds (the CLI's ``AlignModule``; with ``--lm``, that LM with default image and video adapters).
So a bad sample's reason is exactly the one training would report, and prompt lengths count media as the
model expands them (``anyalign/data/scan.py``). Unpairing and batching are left out: they never reject a
sample, and unpairing would count each pair twice. A media item's picture is its adapter's ``preview``.
"""
from __future__ import annotations

import argparse
import json
import textwrap

from modalities.base import BadSample

from .cli import build_cli
from .data.loading import Compose
from .data.module import PreferenceDataModule
from .data.pipeline import Skipped, read_shards
from .data.scan import example_stages, format_report, scan
from .data.schema import media_fields, parse_record


# ---- building the model and data exactly as the CLI does ----
def load(shards: list[str], config: str | None = None, lm: str = "assets/tiny-lm", max_length: int = 1024):
    """-> a PreferenceDataModule over ``shards``, bound to the model ``config`` (or ``lm``) builds."""
    if config is None:
        from modalities import ImageAdapter, VideoAdapter

        from .model import MultimodalLM
        dm = PreferenceDataModule(shards, num_workers=0, max_length=max_length)
        dm.bind(MultimodalLM(lm, {"image": ImageAdapter(), "video": VideoAdapter()}))
        return dm
    cli = build_cli(["--config", config, "--data.train_shards", json.dumps(shards), "--data.val_shards", "null",
                     "--data.num_workers", "0"])
    cli.datamodule.bind(cli.model.policy)
    return cli.datamodule


# ---- rendering one sample ----
WIDTH, PAD = 960, 10


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


def _media(adapter, data: bytes, ext: str):
    """One media item -> the adapter's own picture of it, or a note that it has none."""
    picture = adapter.preview(data, ext)
    return picture if picture is not None else _text(f"(no preview for {type(adapter).__name__})", "gray")


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
    ap = argparse.ArgumentParser(prog="python -m anyalign inspect", description=__doc__,
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
