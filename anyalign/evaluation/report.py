"""The evaluation's outputs: one table (rows = metrics, columns = models), ``eval.json`` and ``eval.png``."""
from __future__ import annotations

import json
from pathlib import Path


def short_names(specs: list[str]) -> dict[str, str]:
    """Column names: a model path shortened to its last two parts (``version_0/export``) where that is unique."""
    short = {s: s if len(s) <= 24 else "/".join(Path(s).parts[-2:]) for s in specs}
    return short if len(set(short.values())) == len(short) else {s: s for s in specs}


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return str(x)
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.000"


def _row(results: dict, label: str, get, digits: int = 3, count=None, keep: bool = False) -> tuple[str, list[str]] | None:
    """A table row, or None where no model has the value (unless ``keep``). ``count``: the sample count, shown in
    the label when every model has the same one, and beside each value otherwise."""
    values = [get(r) for r in results.values()]
    if all(v is None for v in values) and not keep:
        return None
    counts = [count(r) if count else None for r in results.values()]
    same = len(set(counts)) == 1
    if count and same:
        label = f"{label} (n={counts[0]})"
    cells = [_fmt(v, digits) + ("" if same or v is None else f" (n={c})") for v, c in zip(values, counts)]
    return label, cells


def table_rows(results: dict[str, dict]) -> list[tuple[str, list[str]]]:
    first = next(iter(results.values()))
    pref_unit = (first.get("preference") or {}).get("unit", "pair")
    pcount = lambda r: (r.get("preference") or {}).get("count")  # noqa: E731
    acc_label = ("preference accuracy (per pair)" if pref_unit == "pair"
                 else "preference accuracy (per sample, unpaired: not per pair)")
    spec = [(acc_label, lambda r: (r.get("preference") or {}).get("accuracy"), 3, pcount),
            ("ties (not counted as right)", lambda r: (r.get("preference") or {}).get("ties"), 0, pcount),
            ("mean reward margin", lambda r: (r.get("preference") or {}).get("margin"), 4, pcount),
            ("val loss", lambda r: (r.get("preference") or {}).get("loss"), 4, pcount)]
    for label in first.get("media_reliance", {}):
        spec.append((f"media reliance {label} (nats)", lambda r, k=label: r["media_reliance"].get(k, {}).get("nats"),
                     3, lambda r, k=label: r["media_reliance"].get(k, {}).get("samples"), True))
    gen = lambda r: r.get("generation", {}).get("samples")  # noqa: E731
    chs = lambda r: r.get("choices", {}).get("samples")  # noqa: E731
    spec += [("generation exact match", lambda r: r.get("generation", {}).get("exact"), 3, gen),
             ("generation answer contained", lambda r: r.get("generation", {}).get("contained"), 3, gen),
             ("choice accuracy (mean log-prob per token)", lambda r: r.get("choices", {}).get("accuracy_mean"), 3, chs),
             ("choice accuracy (summed log-prob)", lambda r: r.get("choices", {}).get("accuracy_sum"), 3, chs)]
    for m in first.get("unchanged_answers", {}):
        spec.append((f"answer unchanged, {m} replaced (lower is better)",
                     lambda r, m=m: r["unchanged_answers"].get(m, {}).get("rate"), 3,
                     lambda r, m=m: r["unchanged_answers"].get(m, {}).get("samples")))
    spec.append(("samples skipped", lambda r: len(r.get("skipped", [])), 0, None))
    return [row for row in (_row(results, *s) for s in spec) if row is not None]


def format_table(results: dict[str, dict]) -> str:
    names = short_names(list(results))
    rows = table_rows(results)
    head = ["metric", *(names[s] for s in results)]
    width = [max(len(head[0]), *(len(label) for label, _ in rows))]
    width += [max(len(head[c]), *(len(cells[c - 1]) for _, cells in rows)) for c in range(1, len(head))]
    line = lambda cols: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(cols, width)))
    out = [line(head), line(["-" * w for w in width])]
    out += [line([label, *cells]) for label, cells in rows]
    return "\n".join(out)


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def _bars(ax, groups: list[str], series: dict[str, list]) -> None:
    import numpy as np
    x = np.arange(len(groups))
    n = max(len(series), 1)
    width = 0.8 / n
    for k, (name, values) in enumerate(series.items()):
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(x + (k - (n - 1) / 2) * width, heights, width, label=name, color=f"C{k}")
        for b, v in zip(bars, values):
            ax.annotate("n/a" if v is None else _fmt(v, 2), (b.get_x() + b.get_width() / 2, b.get_height()),
                        xytext=(0, 2 if (v or 0) >= 0 else -2), textcoords="offset points", ha="center",
                        va="bottom" if (v or 0) >= 0 else "top", fontsize=8)
    ax.set_xticks(x, groups, fontsize=9)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot(results: dict[str, dict], path: Path, title: str) -> Path:
    """Grouped bars, one colour per model: accuracies and rates (fractions) on top, media reliance (nats) below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = short_names(list(results))
    first = next(iter(results.values()))
    pref = lambda key: lambda r: (r.get("preference") or {}).get(key)  # noqa: E731
    fractions = [("preference\naccuracy", pref("accuracy")), ("preference\nties (↓)", pref("tie_rate")),
                 ("generation\nexact match", lambda r: r.get("generation", {}).get("exact")),
                 ("generation\nanswer contained", lambda r: r.get("generation", {}).get("contained")),
                 ("choice accuracy\n(mean per token)", lambda r: r.get("choices", {}).get("accuracy_mean")),
                 ("choice accuracy\n(summed)", lambda r: r.get("choices", {}).get("accuracy_sum"))]
    fractions += [(f"answer unchanged,\n{m} replaced (↓)", lambda r, m=m: r["unchanged_answers"].get(m, {}).get("rate"))
                  for m in first.get("unchanged_answers", {})]
    fractions = [(g, f) for g, f in fractions if any(f(r) is not None for r in results.values())]
    reliance = list(first.get("media_reliance", {}))
    groups = max(len(fractions), len(reliance), 4)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(9.0, 1.45 * groups + 1.5), 8.4))
    _bars(top, [g for g, _ in fractions], {names[s]: [f(r) for _, f in fractions] for s, r in results.items()})
    top.set_ylim(0, 1.15)
    top.set_ylabel("fraction of samples")
    top.set_title("accuracies and rates (↓: lower is better)", fontsize=11)
    if reliance:
        values = {names[s]: [r["media_reliance"].get(k, {}).get("nats") for k in reliance] for s, r in results.items()}
        _bars(bottom, [k.replace("/", "\n", 1) for k in reliance], values)
        flat = [abs(v) for vs in values.values() for v in vs if v]
        if flat and max(flat) > 20 * sorted(flat)[len(flat) // 2]:  # one operator dwarfs the rest: symlog
            bottom.set_yscale("symlog", linthresh=0.1)
            bottom.set_ylabel("nats per sample (symlog scale)")
        else:
            bottom.set_ylabel("nats per sample")
        bottom.margins(y=0.15)
    else:
        bottom.text(0.5, 0.5, "media reliance not measured", ha="center", va="center", transform=bottom.transAxes)
        bottom.set_xticks([])
        bottom.set_yticks([])
    bottom.set_title("media reliance: log p(chosen | media) − log p(chosen | corrupted media), per operator "
                     "(higher: the answer depends more on the media)", fontsize=11)
    handles, labels = top.get_legend_handles_labels()
    fig.legend(handles, labels, title="model", loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.96),
               frameon=False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
