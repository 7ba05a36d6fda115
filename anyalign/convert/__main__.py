"""``python -m anyalign.convert FORMAT SOURCE OUT_PATTERN ...``: see ``anyalign/convert/__init__.py``."""
import sys

from .cli import main

sys.exit(main())
