"""Convert other tools' preference datasets into anyalign shards; see ``anyalign/data/convert.py``.

    python tools/convert.py FORMAT SOURCE OUT_PATTERN [--media-root DIR] [--maxcount N] [--maxsize BYTES] [--resize N]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from anyalign.data.convert import main  # noqa: E402

sys.exit(main())
