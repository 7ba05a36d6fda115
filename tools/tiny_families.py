"""Tiny random checkpoints of the multimodal families transformers ships, built locally for tests.

    python tools/tiny_families.py FAMILY OUT_DIR      # one family
    python tools/tiny_families.py --all OUT_ROOT      # every family, each in OUT_ROOT/FAMILY
    python tools/tiny_families.py --list              # the family names

The command line of the package tools/tiny_family_builders/ (``build``, ``FAMILIES``, ...; tests/test_tiny_families.py
loads it by path). What each family is and does: docs/families.md.
"""
import sys

# tools/ is sys.path[0] when this file runs as a script
from tiny_family_builders import main

if __name__ == "__main__":
    sys.exit(main())
