"""Convert other tools' preference datasets into anyalign's WebDataset shards: ``python -m anyalign convert``
(or ``python -m anyalign.convert``). Usage and behaviour: ``cli.py``. Importing this package, and ``--help``,
load nothing heavy: the adapters (torch), Pillow, webdataset and pyarrow are imported when a conversion runs.
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
