"""The command line of ``python -m anyalign.convert``. Parsing it imports only the layouts' names; the
conversion (adapters, Pillow, webdataset, pyarrow) is imported once the arguments are known."""
from __future__ import annotations

import argparse
import os
import sys

from . import __doc__ as DOC
from .formats import FORMATS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m anyalign.convert", description=DOC.split("\n\n")[0],
                                epilog=DOC.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=list(FORMATS), help="the source layout")
    p.add_argument("source", help="a .jsonl/.json/.parquet/.arrow file, a save_to_disk directory, or a directory")
    p.add_argument("out_pattern", help="shard names with a shard number, e.g. out/train-%%06d.tar")
    p.add_argument("--media-root", help="media paths are relative to this and may not leave it "
                                        "(default: the directory of SOURCE)")
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
                          adapters=adapters)
    except ValueError as e:
        p.error(str(e))
    return 0 if summary["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
