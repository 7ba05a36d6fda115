"""What a step reports, computed from the loss terms' outputs and the log-probs; nothing here trains.

The headline rewards (``rewards/chosen``, ``rewards/margins``, ``rewards/accuracies`` and the held-out
accuracy printed after fit) come from one named term, the module's ``reward_term``: by default the only
preference term (its rewards compare chosen with rejected), so reordering the config's terms never
changes them. Other terms with rewards log their margin as ``rewards/<name>_margin``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .logprobs import SeqLogps
from .losses import LOSSES
from .sequences import SEQUENCES


def default_reward_term(terms: list[dict], requested: str | None) -> str | None:
    """The term whose rewards define the headline metrics (checked at start-up)."""
    names = [t["name"] for t in terms]
    # pair terms, and listwise terms (their rewards: the best and the worst of K responses)
    preference = [n for n in names if LOSSES[n].compares in (("chosen", "rejected"), ("responses",))]
    if requested is not None:
        if requested not in preference:
            raise ValueError(f"model.reward_term={requested!r} is not a preference term of model.losses "
                             f"(terms whose rewards compare chosen with rejected: {preference or 'none'})")
        return requested
    if len(set(preference)) > 1:
        raise ValueError(f"model.losses has several preference terms {preference}; name the one whose rewards "
                         "define rewards/* and the held-out accuracy with model.reward_term")
    return preference[0] if preference else None


@dataclass
class TermOutput:
    name: str
    losses: torch.Tensor
    chosen_rewards: torch.Tensor | None
    rejected_rewards: torch.Tensor | None


@dataclass
class Verdicts:
    """Per-example outcome on held-out data: right (strictly), and tied (neither side preferred)."""
    correct: torch.Tensor
    ties: torch.Tensor


def step_metrics(loss: torch.Tensor, outputs: list[TermOutput], reward_term: str | None, policy: SeqLogps,
                 reference: SeqLogps | None, batch: dict) -> tuple[dict, Verdicts | None]:
    metrics: dict[str, torch.Tensor] = {"loss": loss.detach()}
    verdicts = None
    for out in outputs:
        if out.chosen_rewards is None:
            continue
        c, r = out.chosen_rewards, out.rejected_rewards
        if out.name == reward_term and "rewards/chosen" not in metrics:
            metrics |= {"rewards/chosen": c.mean(), "rewards/rejected": r.mean(),
                        "rewards/margins": (c - r).mean(), "rewards/accuracies": (c > r).float().mean()}
            verdicts = Verdicts((c > r).float(), c == r)
        else:  # e.g. rewards/conditional_margin
            metrics[f"rewards/{out.name}_margin"] = (c - r).mean()
    index = batch["index"]
    for kind in SEQUENCES.values():  # policy-side log p(response | media) - log p(response | corrupted media)
        if kind.corrupted_media and kind.name in index:
            clean = policy.logps[index[kind.response]]
            name = "media_reliance" if kind.response == "chosen" else f"media_reliance_{kind.response}"
            metrics[name] = (clean - policy.logps[index[kind.name]]).detach().mean()
    for seq in ("chosen", "rejected", "completion"):
        if seq in index:
            metrics[f"logps/{seq}"] = policy.logps[index[seq]].detach().mean()
    if "desirable" in batch and reference is not None:  # unpaired: the implicit reward's sign vs the label
        unpaired, verdicts = unpaired_metrics(policy, reference, batch)
        metrics |= unpaired
    return metrics, verdicts


def unpaired_metrics(policy: SeqLogps, reference: SeqLogps, batch: dict) -> tuple[dict, Verdicts]:
    ix = batch["index"]["completion"]
    r = (policy.logps[ix] - reference.logps[ix]).detach()
    d = batch["desirable"]
    right = ((r > 0) == d) & (r != 0)  # a zero implicit reward prefers nothing: a tie, never right
    metrics = {"rewards/accuracies": right.float().mean()}
    if d.any():  # a batch may hold one label only: no NaN means in the logs
        metrics["rewards/desirable"] = r[d].mean()
    if not d.all():
        metrics["rewards/undesirable"] = r[~d].mean()
    return metrics, Verdicts(right.float(), r == 0)


class HeldOut:
    """Held-out verdicts summed over an epoch (and over ranks at its end)."""

    NAMES = ("correct", "ties", "pairs")

    def __init__(self):
        self.totals = {k: 0.0 for k in self.NAMES}

    def add(self, verdicts: Verdicts) -> None:
        self.totals["correct"] += float(verdicts.correct.sum())
        self.totals["ties"] += int(verdicts.ties.sum())
        self.totals["pairs"] += len(verdicts.correct)

    def reduce(self, strategy, device) -> None:
        """Every rank saw its own share: sum them (call on every rank)."""
        t = torch.tensor([float(self.totals[k]) for k in self.NAMES], dtype=torch.float64, device=device)
        self.totals = dict(zip(self.NAMES, strategy.reduce(t, reduce_op="sum").tolist()))

    def summary(self, step: int, sanity: bool) -> dict | None:
        if not self.totals["pairs"]:
            return None
        return {"step": step, "sanity": sanity, "accuracy": self.totals["correct"] / self.totals["pairs"],
                "ties": int(self.totals["ties"]), "pairs": int(self.totals["pairs"])}
