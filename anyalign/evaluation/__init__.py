"""The parts of ``python -m anyalign evaluate`` (``anyalign/evaluate.py``): ``held_out`` (preference metrics and
media reliance through the module's own validation step), ``answers`` (generation and likelihood-choice accuracy,
answers unchanged under replaced media) and ``report`` (the table, ``eval.json`` and ``eval.png``)."""
