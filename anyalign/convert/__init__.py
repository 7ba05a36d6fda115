"""Convert other tools' preference datasets into anyalign's WebDataset shards.

    python -m anyalign.convert FORMAT SOURCE OUT_PATTERN [--media-root DIR] [--maxcount N] [--maxsize BYTES]
                               [--resize N] [--adapter NAME=pkg.module.Class ...]

FORMAT is one of jsonl, trl, llamafactory, swift, rlaifv, align_anything (the row layouts, ``formats.py``).
SOURCE is a .jsonl/.json/.parquet/.arrow file, a Hugging Face ``save_to_disk`` directory, or any other
directory, whose .jsonl/.json/.parquet/.arrow files are read in sorted order (``sources.py``). OUT_PATTERN
names the shards, e.g. ``out/train-%06d.tar``.

Media items are grouped by modality name; each modality's adapter decides its prompt marker
(``placeholder``) and the extensions its items may be written with (``extensions``, ``container_extensions``):
the built-in adapters and installed packages' ``anyalign.modalities`` entry points, plus
``--adapter NAME=pkg.module.Class`` for a modality defined elsewhere (``adapters.py``). The jsonl layout takes
any modality's items as ``"media": {"NAME": [paths]}``.

Every row goes through one path (``run.py``): layout -> key -> markers and text checks -> media checks
(``media.py``) -> shards. A bad row is skipped and counted by reason (``reasons.py``), never fatal. Media
paths are relative to ``--media-root`` (default: the directory holding SOURCE) and may not leave it. Media
bytes are copied as they are; images are only opened to check them, and re-encoded as JPEG only when
``--resize N`` is given and their longer side exceeds N.

Importing this package, and ``--help``, load nothing heavy: the adapters (torch), Pillow, webdataset and
pyarrow are imported when a conversion runs.
"""
from __future__ import annotations

__all__ = ["convert", "main"]


def __getattr__(name: str):
    if name == "convert":
        from .run import convert
        return convert
    if name == "main":
        from .cli import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
