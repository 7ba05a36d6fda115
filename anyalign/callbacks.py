"""Callbacks the module installs itself (the end-of-run report, the export and the training curves) and those the
command line adds to ``fit`` (``AlignCLI``): one run directory on every rank, the held-out pass after the last step
and a progress bar in optimizer steps."""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


class ReportCallback(L.Callback):
    """Reports skipped samples at each epoch end and, after fit, the held-out reward accuracy."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        """The held-out pass before training (``trainer.num_sanity_val_steps``; the shipped configs run all of it)
        is the baseline: Lightning keeps sanity-check metrics out of the loggers, so they are written here, at step
        0, beside the later passes (metrics.csv, TensorBoard, curves.png)."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

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
            lines += held_out_summary(hist, unpaired=bool(getattr(trainer.datamodule, "unpaired", False)))
        lines += online_summary(getattr(pl_module, "online_history", []))
        lines.append(f"[anyalign] bad samples skipped: {len(pl_module.skipped)}")
        for url, key, reason in pl_module.skipped[:50]:
            lines.append(f"    {url} :: {key}: {reason}")
        print("\n".join(lines))


def held_out_summary(history: list[dict], unpaired: bool = False) -> list[str]:
    """The end-of-fit lines about the held-out passes (``AlignModule.val_history``: one ``HeldOut.summary`` per pass):
    the last pass's accuracy, its ties apart (a tie is never counted as right), and the first pass's for comparison.

    Paired data: a pair is right when the chosen response's reward beats the rejected one's. Unpaired data (KTO):
    each sample alone is right when the sign of its implicit reward log pi/pi_ref matches its label (> 0 for a
    desirable completion, < 0 for an undesirable one); no two responses are compared, so the count is of samples."""
    first, last = history[0], history[-1]
    unit = "samples" if unpaired else "pairs"
    what = "held-out reward accuracy" + (" (per sample, unpaired)" if unpaired else "")

    def ties(s):
        return f"{s['ties']} of them tie" if s["ties"] else "no ties"
    line = (f"[anyalign] {what}: {last['accuracy']:.3f} on {last['pairs']} {unit} at step {last['step']} "
            f"({ties(last)}; a tie is counted as not right)")
    if first is not last:
        line += f"; {first['accuracy']:.3f} at step {first['step']}"
        if first["ties"]:
            line += (f", where {first['ties']} {unit} tie" +
                     (": policy = reference" if first["step"] == 0 and first["ties"] == first["pairs"] else ""))
    lines = [line]
    if unpaired:
        lines.append("[anyalign]   a sample is right when its implicit reward log pi/pi_ref is > 0 for a desirable "
                     "completion and < 0 for an undesirable one")
    return lines


def online_summary(history: list[tuple[int, int, int, float]]) -> list[str]:
    """The end-of-fit line of an online run (``AlignModule.online_history``, this rank's steps): the mean reward of
    the sampled responses over the first and the last tenth of the steps, and the share of prompts left out because
    their K rewards tied (all of them: a warning that nothing was trained online)."""
    if not history:
        return []
    scored, tied = sum(h[1] for h in history), sum(h[2] for h in history)
    if not scored:
        return ["[anyalign] online: no sampled prompt was scored (every one was skipped)"]
    tenth = max(1, len(history) // 10)

    def mean(part):
        n = sum(h[1] for h in part)
        return sum(h[3] for h in part) / n if n else float("nan")
    line = (f"[anyalign] online: {scored} prompts scored; mean reward of the samples {mean(history[:tenth]):.3f} over "
            f"the first {tenth} step(s), {mean(history[-tenth:]):.3f} over the last {tenth}; {tied / scored:.0%} tied "
            "(not trained)")
    lines = [line]
    if tied == scored:
        lines.append("[anyalign] online: every prompt's sampled responses got the same reward, so nothing was trained "
                     "online: start from a model whose answers the reward can tell apart (e.g. an SFT run's export)")
    return lines


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
        from .curves import plot_online
        online = plot_online(metrics, metrics.with_name("online_rewards.png"))
        if online is not None:
            print(f"[anyalign] online reward curve: {online}")


class ValidateAtEndCallback(L.Callback):
    """Runs the held-out pass after the last training step (``trainer.max_steps``) when the ``val_check_interval``
    schedule would not, so the end-of-fit summary and the curves have an after-training number: a run shorter than
    ``val_check_interval`` would otherwise end with the step-0 pass only. Lightning validates at a requested stop
    (``trainer.should_stop``, as early stopping does); on a step the schedule validates anyway, it is the same pass,
    not a second one. Every rank decides alike (from its step count), so no rank waits on another."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step and trainer.enable_validation:
            trainer.should_stop = True


class RunDirCallback(L.Callback):
    """Keeps every rank on rank 0's run directory ``<root>/lightning_logs/version_N`` and, after fit starts, points
    ``<root>/checkpoints`` (a symbolic link) at that run's ``checkpoints/``.

    AlignCLI picks N before the trainer exists, on each rank; ranks started by Lightning see the same files, but
    ranks started by a cluster (SLURM, torchrun) might not. One broadcast in ``setup``, which every rank calls,
    settles it, as Lightning's ModelCheckpoint does for its folder."""

    def __init__(self, root: str, version: int, loggers: list, link: bool = True):
        self.root, self.version, self.loggers, self.link = root, version, loggers, link

    def setup(self, trainer, pl_module, stage: str) -> None:
        from .checkpoint import run_dir
        version = trainer.strategy.broadcast(self.version)
        if version != self.version:
            self.version = version
            for logger in self.loggers:
                logger._version = version
            for cb in trainer.checkpoint_callbacks:
                if getattr(cb, "_anyalign_run_dir", False):
                    cb.dirpath = os.path.realpath(run_dir(self.root, version) / "checkpoints")
        if stage == "fit" and self.link and trainer.is_global_zero:
            link_latest(self.root, self.version)


def link_latest(root: str, version: int) -> None:
    """``<root>/checkpoints`` -> ``lightning_logs/version_N/checkpoints`` (relative, so the folder can move). A real
    ``checkpoints/`` folder there (older runs, ``--trainer.logger false``) is left alone; so is a file system
    without symbolic links."""
    from .checkpoint import RUNS
    link = Path(root) / "checkpoints"
    target = Path(RUNS) / f"version_{version}" / "checkpoints"
    if link.exists() and not link.is_symlink():
        return
    try:
        (Path(root) / target).mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".checkpoints.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
    except (OSError, NotImplementedError):
        pass


class StepProgressBar(TQDMProgressBar):
    """One training bar for the whole run, counting optimizer steps of ``trainer.max_steps`` (Lightning's counts the
    batches of an epoch, unknown on a stream, and with ``max_epochs: -1`` prints ``Epoch 6/-2``). The epoch and,
    once known, its batch count go in the description; the postfix shows a few headline metrics, not every logged
    one. Validation bars show the batch count of the previous held-out pass (the stream has no length)."""

    SHOWN = {"train/loss": "loss", "rewards/accuracies": "acc", "rewards/margins": "margin", "val/loss": "val_loss",
             "val/rewards/accuracies": "val_acc", "val/media_reliance": "val_reliance"}

    def __init__(self, refresh_rate: int = 1, process_position: int = 0):
        super().__init__(refresh_rate, process_position)
        self.epoch_batches: int | None = None  # batches in a full epoch, once one has been seen (or the loader says)
        self.val_batches: int | None = None    # batches in the last complete held-out pass
        self._batch = 0

    @staticmethod
    def _steps(trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else None

    def _describe(self, trainer) -> str:
        known = self.epoch_batches or (None if self.total_train_batches == float("inf") else self.total_train_batches)
        return f"Epoch {trainer.current_epoch}, batch {self._batch}" + (f"/{known}" if known else "") + "; steps"

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        return {short: metrics[key] for key, short in self.SHOWN.items() if key in metrics}

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        steps = self._steps(trainer)
        if steps:
            self.train_progress_bar.reset(total=steps)
            self.train_progress_bar.initial = trainer.global_step  # resumed: the rate counts this run's steps
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer, *args) -> None:
        self._batch = 0
        if not self._steps(trainer):
            return super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(self._describe(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        steps = self._steps(trainer)
        if not steps:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._batch = batch_idx + 1
        n = trainer.global_step
        if self._should_update(n, steps) or self._batch == 1:
            self.train_progress_bar.set_description(self._describe(trainer), refresh=False)
            self.train_progress_bar.n = n
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        steps = self._steps(trainer)
        if steps and trainer.global_step < steps and not trainer.should_stop and self._batch:
            self.epoch_batches = self._batch  # a full epoch: now the stream's length is known
        if not steps:
            return super().on_train_epoch_end(trainer, pl_module)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0 and self.val_progress_bar.total is None and self.val_batches:
            self.val_progress_bar.total = self.val_batches
        if batch_idx == 0:
            self.val_progress_bar.set_description("Validation" if not trainer.sanity_checking else
                                                  "Held-out pass before training")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._val_seen = batch_idx + 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if getattr(self, "_val_seen", 0) and (trainer.sanity_checking and trainer.num_sanity_val_steps == float("inf")
                                              or not trainer.sanity_checking):
            self.val_batches = self._val_seen
        self._val_seen = 0
        super().on_validation_end(trainer, pl_module)
