"""Compute reference log-probs once, for ``model.reference: precomputed``; see ``anyalign/precompute.py``.

    python tools/precompute.py --config my.yaml [overrides]    # same as: python -m anyalign precompute ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from anyalign.precompute import main  # noqa: E402

main(sys.argv[1:])
