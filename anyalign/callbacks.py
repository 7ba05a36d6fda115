"""Callbacks the module installs itself: the end-of-run report, the export and the training curves."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


class ReportCallback(L.Callback):
    """Reports skipped samples at each epoch end and, after fit, the held-out reward accuracy."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        skipped = pl_module.skipped
        if skipped:
            reasons = Counter(reason.split(":")[0] for _, _, reason in skipped)
            print(f"\n[anyalign] epoch {trainer.current_epoch}: {len(skipped)} bad sample(s) skipped so far "
                  f"({dict(reasons)}); first keys: {[k for _, k, _ in skipped[:10]]}")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        lines = [f"[anyalign] fit finished in {time.perf_counter() - self.start:.1f} s, "
                 f"{trainer.global_step} optimizer steps"]
        hist = pl_module.val_history
        if hist:
            first, last = hist[0], hist[-1]
            lines.append(f"[anyalign] held-out reward accuracy: {last['accuracy']:.3f} on {last['pairs']} pairs "
                         f"(step {last['step']}; {first['accuracy']:.3f} at step {first['step']}"
                         f"{', where ' + str(first['ties']) + ' pairs tie: policy = reference' if first['ties'] else ''})")
        lines.append(f"[anyalign] bad samples skipped: {len(pl_module.skipped)}")
        for url, key, reason in pl_module.skipped[:50]:
            lines.append(f"    {url} :: {key}: {reason}")
        print("\n".join(lines))


class ExportCallback(L.Callback):
    """Writes the aligned policy in Hugging Face format when fit ends."""

    def __init__(self, directory: str):
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a broadcast: every rank takes part, or the others have left when rank 0 asks
        if not trainer.is_global_zero:
            return
        from .export import save_aligned
        out = Path(self.directory)
        if not out.is_absolute():
            out = Path(log_dir or trainer.default_root_dir) / out
        save_aligned(pl_module.policy, out)
        print(f"[anyalign] aligned model exported to {out}")


class CurvesCallback(L.Callback):
    """After fit, plots the CSV logger's metrics.csv into curves.png beside it (rank 0; no CSV logger, no plot)."""

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        # the CSV logger's own directory: trainer.log_dir would broadcast, a collective call on this rank only
        csv = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv is None:
            return
        csv.save()  # Lightning flushes it only after on_fit_end
        metrics = Path(csv.log_dir) / "metrics.csv"
        from .curves import plot_curves
        try:
            if not metrics.is_file():
                raise ValueError(f"nothing was logged to {metrics}")
            out = plot_curves(metrics, metrics.with_name("curves.png"))
        except ValueError as e:  # a run shorter than trainer.log_every_n_steps logs no training step
            print(f"[anyalign] no training curves: {e} ({trainer.global_step} steps, "
                  f"trainer.log_every_n_steps={trainer.log_every_n_steps})")
            return
        print(f"[anyalign] training curves: {out}")
