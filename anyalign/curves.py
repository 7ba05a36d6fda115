"""Training curves from a run's metrics.csv (Lightning's CSVLogger) as one PNG: training loss, reward margins
(train and held-out), held-out reward accuracy, gradient norm and learning rate, each against the optimizer step.

Pure: reads one CSV, writes one PNG. matplotlib is imported inside ``plot_curves`` (Agg backend, no display),
so importing this module costs nothing.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

REQUIRED = ("step", "train/loss")


def read_series(metrics_csv: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Column -> (steps, values) over the rows where that column has a finite value (CSVLogger rows are sparse)."""
    path = Path(metrics_csv)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing} (columns: {columns}): not a training run's "
                             "metrics.csv, or the run logged no training step (trainer.log_every_n_steps)")
        series: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in columns if c != "step"}
        for row in reader:
            if not row.get("step"):
                continue
            step = float(row["step"])
            for c, (xs, ys) in series.items():
                v = row.get(c)
                if v not in (None, "") and math.isfinite(float(v)):
                    xs.append(step)
                    ys.append(float(v))
    return series


def _smoothed(ys: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _save(fig, metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Title the figure with the run directory, lay it out and write it (the figure is closed)."""
    import matplotlib.pyplot as plt
    fig.suptitle(f"{Path(metrics_csv).parent}", fontsize=10, color="gray")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot ``metrics_csv`` into ``out_png`` (1200 x 800 px) and return its path.

    Raises ValueError naming the file if it has no ``step`` and ``train/loss`` columns; panels whose metrics the
    run did not log (no held-out set, a loss without paired rewards) say so instead of plotting.
    """
    series = read_series(metrics_csv)
    if not series["train/loss"][0]:
        raise ValueError(f"{metrics_csv} has no train/loss value: the run logged no training step "
                         "(fewer steps than trainer.log_every_n_steps?)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    def line(ax, column, label, **kw):
        xs, ys = series.get(column, ([], []))
        if xs:
            ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 30 else None, markersize=3, **kw)
        return bool(xs)

    def absent(ax, what):
        ax.text(0.5, 0.5, f"no {what} in this run's log", transform=ax.transAxes, ha="center", va="center",
                color="gray", fontsize=11)

    with plt.rc_context({"font.size": 11, "axes.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3}):
        fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100, sharex=True)  # one step axis for all panels
        (loss_ax, margin_ax), (acc_ax, grad_ax) = axes
        for ax in axes.flat:
            ax.tick_params(labelbottom=True)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))

        xs, ys = series["train/loss"]
        loss_ax.plot(xs, ys, color="tab:blue", alpha=0.35 if len(xs) > 30 else 1.0, label="train (each logged step)",
                     marker="o" if len(xs) <= 30 else None, markersize=3)
        if len(xs) > 30:
            loss_ax.plot(xs, _smoothed(ys, max(2, len(xs) // 20)), color="tab:blue", label="train (running mean)")
        line(loss_ax, "val/loss", "held-out", color="tab:orange")
        loss_ax.set(title="Loss", xlabel="optimizer step", ylabel="loss (nats)")
        loss_ax.legend()

        shown = [line(margin_ax, "rewards/margins", "train (batch mean)", color="tab:blue"),
                 line(margin_ax, "val/rewards/margins", "held-out", color="tab:orange")]
        margin_ax.set(title="Reward margin: chosen − rejected reward", xlabel="optimizer step",
                      ylabel="reward margin (nats, scaled by β)")
        margin_ax.axhline(0.0, color="black", linewidth=0.8)
        if any(shown):
            margin_ax.legend()
        else:
            absent(margin_ax, "paired reward margin")

        if line(acc_ax, "val/rewards/accuracies", "held-out", color="tab:orange"):
            acc_ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance (0.5)")
            acc_ax.legend()
        else:
            absent(acc_ax, "held-out reward accuracy")
        acc_ax.set(title="Held-out reward accuracy (chosen > rejected)", xlabel="optimizer step",
                   ylabel="accuracy (fraction of pairs)", ylim=(-0.02, 1.02))

        grad_ax.set(title="Gradient norm and learning rate", xlabel="optimizer step",
                    ylabel="gradient 2-norm, before clipping")
        has_grad = line(grad_ax, "train/grad_norm", "gradient norm", color="tab:green")
        lr_ax = grad_ax.twinx()
        has_lr = line(lr_ax, "train/lr", "learning rate (right axis)", color="tab:purple")
        lr_ax.set_ylabel("learning rate")
        lr_ax.grid(False)
        lr_ax.yaxis.set_major_formatter(FormatStrFormatter("%.1e"))
        if has_grad or has_lr:  # one legend for both axes, drawn on the upper one so no line crosses it
            handles = [h for ax in (grad_ax, lr_ax) for h in ax.get_legend_handles_labels()[0]]
            lr_ax.legend(handles=handles, loc="best")
        else:
            absent(grad_ax, "gradient norm or learning rate")

        return _save(fig, metrics_csv, out_png)


def plot_online(metrics_csv: str | Path, out_png: str | Path) -> Path | None:
    """The reward curve of an online run (``online/*`` in ``metrics_csv``) into ``out_png`` (1200 x 450 px): the
    mean reward of the sampled responses, of the best and of the worst of each prompt's K, against the optimizer
    step, and the share of prompts whose K rewards tied (left out of the step). None if the run logged no reward."""
    series = read_series(metrics_csv)
    xs, ys = series.get("online/reward", ([], []))
    if not xs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with plt.rc_context({"font.size": 11, "axes.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3}):
        fig, (reward_ax, tied_ax) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, width_ratios=(2, 1))
        many = len(xs) > 30
        reward_ax.plot(xs, ys, color="tab:blue", alpha=0.35 if many else 1.0, marker=None if many else "o",
                       markersize=3, label="mean of the K samples (each logged step)")
        if many:
            reward_ax.plot(xs, _smoothed(ys, max(2, len(xs) // 20)), color="tab:blue", label="mean (running mean)")
        for column, label, color in (("online/reward_best", "best of K", "tab:green"),
                                     ("online/reward_worst", "worst of K", "tab:red")):
            bx, by = series.get(column, ([], []))
            if bx:
                reward_ax.plot(bx, _smoothed(by, max(2, len(bx) // 20)) if many else by, color=color, linewidth=1,
                               marker=None if many else "o", markersize=3,
                               label=label + (" (running mean)" if many else ""))
        reward_ax.set(title="Reward of the responses sampled from the policy", xlabel="optimizer step",
                      ylabel="reward")
        reward_ax.legend()
        tx, ty = series.get("online/tied", ([], []))
        if tx:
            tied_ax.plot(tx, _smoothed(ty, max(2, len(tx) // 20)) if len(tx) > 30 else ty, color="tab:gray",
                         marker=None if len(tx) > 30 else "o", markersize=3)
        tied_ax.set(title="Prompts whose K rewards tie (not trained)", xlabel="optimizer step",
                    ylabel="share of online prompts", ylim=(-0.02, 1.02))
        for ax in (reward_ax, tied_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return _save(fig, metrics_csv, out_png)
