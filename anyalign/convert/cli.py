"""Convert other tools' preference datasets into anyalign's WebDataset shards.

    python -m anyalign.convert FORMAT SOURCE OUT_PATTERN [--media-root DIR] [--shards N] [--maxcount N]
                               [--maxsize BYTES] [--resize N] [--adapter NAME=pkg.module.Class ...]

FORMAT is one of jsonl, trl, llamafactory, swift, rlaifv, align_anything, ultrafeedback (the row layouts,
``formats.py``; ultrafeedback: instruction + ``completions`` with ``overall_score`` or ``ratings``, every
completion kept as one of K scored responses).
SOURCE is a .jsonl/.json/.parquet/.arrow file, a Hugging Face ``save_to_disk`` directory, or any other
directory, whose .jsonl/.json/.parquet/.arrow files are read in sorted order (``sources.py``). OUT_PATTERN
names the shards, e.g. ``out/train-%06d.tar``.

Media items are grouped by modality name; each modality's adapter decides its prompt marker
(``placeholder``) and the extensions its items may be written with (``extensions``, ``container_extensions``):
the built-in adapters and installed packages' ``anyalign.modalities`` entry points, plus
``--adapter NAME=pkg.module.Class`` for a modality defined elsewhere (``adapters.py``).

The jsonl layout (anyalign's own schema), one JSON object per line:
  {"id": "s1",                                   optional; the sample's key (else jsonl-<row number>)
   "prompt": "<image>\\nWhat is it?",           or a list of {"role", "content"} turns ("messages" too)
   "system": "Be brief.",                        optional
   "chosen": "A cat.", "rejected": "A dog.",     or, unpaired (KTO): "completion": "...", "label": true
                                                 or K responses: "responses": ["...", ...] with "ranking"
                                                 (indices, best first), "ranks" (lower better) or "scores"
   "images": ["img/a.jpg"]}                      media, in marker order, paths relative to --media-root
  Media of modality NAME (image, video, audio, or an --adapter's) may sit under any of
    "NAMEs": [paths]          "NAME": path or [paths]          "NAME_path": path or [paths]
    "media": {"NAME": path or [paths], ...}    ("media": {"NAMEs": ...} too)
    "media": [{"type": "NAME", "path": path}, ...]
  and an item may be a path, {"path": ...} or {"bytes": ...}. One marker (<image>, <video>, <audio>) per item.
  chosen_weights / rejected_weights / completion_weights (weighted spans), answer and choices are kept.
  A row is never skipped for a key it does not know, but when it is skipped (e.g. its markers and media do not
  match) the reason names the keys it did not read: a misspelt media key loses the row's media.

Shards: the data loader gives each worker of each rank whole shards, so a data set in fewer shards than
data workers x ranks leaves some of them idle; --maxcount 10000 puts a small set in one shard. --shards N
deals the samples round-robin into exactly N shards (N = data.num_workers x GPUs, or a multiple); convert
warns when it writes fewer than 2.

Every row goes through one path (``run.py``): layout -> key -> markers and text checks -> media checks
(``media.py``) -> shards. A bad row is skipped and counted by reason (``reasons.py``), never fatal. Media
paths are relative to ``--media-root`` (default: the directory holding SOURCE) and may not leave it. Media
bytes are copied as they are; images are only opened to check them, and re-encoded as JPEG only when
``--resize N`` is given and their longer side exceeds N.

Importing this package, and ``--help``, load nothing heavy: the adapters (torch), Pillow, webdataset and
pyarrow are imported when a conversion runs.

(This module is the command line: parsing it imports only the layouts' names; the conversion is imported
once the arguments are known.)
"""
from __future__ import annotations

import argparse
import os
import sys

from .formats import FORMATS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m anyalign.convert", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2].split("\n(This module")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=list(FORMATS), help="the source layout")
    p.add_argument("source", help="a .jsonl/.json/.parquet/.arrow file, a save_to_disk directory, or a directory")
    p.add_argument("out_pattern", help="shard names with a shard number, e.g. out/train-%%06d.tar")
    p.add_argument("--media-root", help="media paths are relative to this and may not leave it "
                                        "(default: the directory of SOURCE)")
    p.add_argument("--shards", type=int, help="write exactly N shards, samples dealt round-robin (fewer only with "
                                              "fewer samples); --maxcount and --maxsize are then not used")
    p.add_argument("--maxcount", type=int, default=10000, help="samples per shard at most (default 10000)")
    p.add_argument("--maxsize", type=lambda s: int(float(s)), default=1_000_000_000,
                   help="bytes per shard before a new one starts (default 1e9)")
    p.add_argument("--resize", type=int, help="shrink images to this longer side, re-encoded as JPEG")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=pkg.module.Class",
                   help="the adapter of modality NAME (its placeholder and extensions), for a modality defined "
                        "outside anyalign; repeatable; replaces a built-in one of the same name")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if not os.path.exists(a.source):
        p.error(f"no such file or directory: {a.source}")
    from .adapters import parse_option
    from .run import convert

    try:
        adapters = dict(parse_option(opt) for opt in a.adapter)
        summary = convert(a.format, a.source, a.out_pattern, a.media_root, a.maxcount, a.maxsize, a.resize,
                          adapters=adapters, shards=a.shards)
    except ValueError as e:
        p.error(str(e))
    return 0 if summary["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
