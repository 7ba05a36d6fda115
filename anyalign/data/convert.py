"""Moved to the package ``anyalign.convert`` (``python -m anyalign.convert FORMAT SOURCE OUT_PATTERN``).

Kept only as the import ``tools/convert.py`` still uses; new code imports ``anyalign.convert``.
"""
import sys

from anyalign.convert.cli import main
from anyalign.convert.run import convert

__all__ = ["convert", "main"]

if __name__ == "__main__":
    sys.exit(main())
