"""Convert other tools' preference datasets into anyalign shards; see ``anyalign/convert/``.

    python tools/convert.py FORMAT SOURCE OUT_PATTERN [--media-root DIR] [--maxcount N] [--maxsize BYTES] [--resize N]
                            [--adapter NAME=pkg.module.Class]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from anyalign.convert.cli import main  # noqa: E402

sys.exit(main())
