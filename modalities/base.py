"""The modality adapter contract.

An adapter is one object per modality with two faces:
- CPU side, run in data workers: ``decode`` (bytes -> raw), ``preprocess`` (raw -> tensor),
  ``num_tokens`` (LM positions an item takes) and ``corrupt`` (named negative operators);
- model side, an ``nn.Module``: ``forward(batch) -> [items, tokens, lm_hidden]``.

The projector into the LM is built late, by ``bind(lm_hidden_size)``, because the adapter is configured
before the LM is loaded. Constructor arguments are recorded automatically (``init_args``) so the export
can rebuild any adapter, including ones defined outside anyalign.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn


class BadSample(ValueError):
    """A sample that cannot be used; the message is the reason reported with its key."""


class _RecordsInitArgs(type):
    """Records the arguments an adapter was constructed with (``init_args``), so an export can rebuild any
    adapter, one defined outside anyalign included. Done at the call ``Adapter(...)``, not in ``__new__``:
    ``copy.deepcopy`` and ``pickle`` build instances through ``cls.__new__(cls)`` with no arguments and then
    restore ``__dict__``, which already holds the record. ``**kwargs`` passed on to a parent are kept too."""

    def __call__(cls, *args, **kwargs):
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        recorded = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = inspect.signature(cls.__init__).parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{cls.__name__}: adapters take keyword-compatible arguments only, not *{name}")
            else:
                recorded[name] = value
        obj = super().__call__(*args, **kwargs)
        obj.__dict__["_init_args"] = recorded
        return obj


def uses_donor(op: Callable) -> Callable:
    """Declare that a corruption operator takes another sample's items of the same batch (``donor=``), as
    ``swap`` does. The collator then finds a donor for it; operators without the mark get ``donor=None``."""
    op.needs_donor = True
    return op


def needs_donor(op: Callable) -> bool:
    return bool(getattr(op, "needs_donor", False))


class ModalityAdapter(nn.Module, metaclass=_RecordsInitArgs):
    #: text marker in prompts, one per media item
    placeholder: ClassVar[str] = ""
    #: shard member extensions this adapter consumes
    extensions: ClassVar[tuple[str, ...]] = ()
    #: container extensions it can also read (e.g. audio from ``KEY.mp4``), used only when the prompt
    #: has this adapter's placeholder and the sample has no member with one of ``extensions``
    container_extensions: ClassVar[tuple[str, ...]] = ()
    #: corruption operators for negatives: name -> ``op(items, rng, donor=None, **params) -> items``
    #: (see ``modalities/corruptions.py``); an operator marked with ``@uses_donor`` is given another sample's
    #: items of the same batch as ``donor``
    operators: ClassVar[dict[str, Callable]] = {}
    #: the operator that measures how much the model reads this modality on held-out data (``media_reliance``)
    #: when ``model.negatives`` names none: one that takes the content away and keeps the shape (a blank image,
    #: a frozen clip, silence); None: not measured
    reliance_operator: ClassVar[str | None] = None

    @property
    def init_args(self) -> dict[str, Any]:
        return dict(self.__dict__.get("_init_args", {}))

    # ---- CPU side (data workers) ----
    def check_items(self, count: int) -> None:
        """Called once per sample with its number of items of this modality, before any is decoded;
        raise ``BadSample`` to refuse the sample (e.g. more images than a cap)."""

    def decode(self, data: bytes, ext: str) -> Any:
        raise NotImplementedError

    def preprocess(self, raw: Any) -> torch.Tensor:
        raise NotImplementedError

    def num_tokens(self, item: torch.Tensor) -> int:
        raise NotImplementedError

    def corrupt(self, items: list[torch.Tensor], op: str, rng: torch.Generator,
                donor: list[torch.Tensor] | None = None, **params) -> list[torch.Tensor]:
        """One sample's items of this modality -> corrupted items of the same shapes."""
        if op not in self.operators:
            raise KeyError(f"{type(self).__name__} has no corruption operator {op!r}; it has {sorted(self.operators)}")
        return self.operators[op](items, rng, donor=donor, **params)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def collate_samples(self, groups: list[list]) -> Any:
        """A batch's items, one list per row in row order -> what ``forward`` takes. The default flattens them
        into ``collate``; an adapter whose items were processed per sample (a pretrained family's) merges
        those instead."""
        return self.collate([item for group in groups for item in group])

    def preview(self, data: bytes, ext: str):
        """A picture of one raw media item for ``inspect --render`` (a ``PIL.Image``), or None for none."""
        return None

    # ---- model side ----
    def train(self, mode: bool = True) -> "ModalityAdapter":
        """Frozen parts (no trainable parameter) stay in eval mode, so e.g. an encoder's dropout and
        batch-norm statistics do not change while only the projector trains."""
        super().train(mode)
        for child in self.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()
        return self

    def bind(self, lm_hidden_size: int) -> None:
        """Build the projector into the LM's hidden size (called once by MultimodalLM)."""
        raise NotImplementedError

    def forward(self, batch: Any, features: dict | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Encode a batch of items into ``[items, tokens, lm_hidden]`` (or a list of ``[tokens_i, lm_hidden]``).

        An adapter either overrides ``forward(batch)``, or implements ``encode`` (media -> features) and
        ``project`` (features -> LM embeddings) and inherits this. With the split, ``features`` is a dict
        that lives as long as one batch, shared by the policy's and the reference model's forwards: while
        the encoder is frozen (``encoder_frozen``) its output is the same for both, so it runs once per
        batch and the reference only re-runs the projector.
        """
        if features is not None and self.encoder_frozen():
            if "features" not in features:
                features["features"] = self.encode(batch)
            return self.project(features["features"])
        return self.project(self.encode(batch))

    def encode(self, batch: Any) -> Any:
        """The encoder side: collated media -> features (tensors, or anything ``project`` takes)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither forward nor encode/project")

    def project(self, features: Any) -> torch.Tensor | list[torch.Tensor]:
        """The projector side: features -> LM embeddings."""
        raise NotImplementedError(f"{type(self).__name__} implements neither forward nor encode/project")

    def shares_features(self) -> bool:
        """Whether this adapter uses the ``encode``/``project`` split (and so can take ``features``)."""
        return type(self).encode is not ModalityAdapter.encode and type(self).forward is ModalityAdapter.forward

    def encoder_frozen(self) -> bool:
        """``encode`` is a fixed function: every parameter outside ``self.projector`` is frozen (the convention
        of the built-in adapters; override if the encoder side trains something else)."""
        projector = {id(p) for p in getattr(self, "projector", nn.Module()).parameters()}
        return not any(p.requires_grad for p in self.parameters() if id(p) not in projector)

    def export(self, directory) -> dict[str, Any]:
        """Write what is needed beside the state dict to rebuild this adapter; return init-arg overrides."""
        return {}


def mlp_projector(in_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """LLaVA-1.5's projector: Linear, then (GELU, Linear) * (depth - 1)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def freeze(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


def check_pretrained(path: str, what: str) -> str:
    """Fail early, naming ``what``, when ``path`` looks local but does not exist.

    A hub id is ``org/name``; anything absolute, relative (``./``, ``~``), deeper, or whose first
    component is a local folder (``assets/tiny-lm``) is a local path.
    """
    p = Path(path).expanduser()
    if p.exists():
        return path
    parts = Path(path).parts
    if path.startswith(("/", ".", "~")) or len(parts) != 2 or Path(parts[0]).is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path  # a hub id: transformers resolves it (and fails with its own message when offline)
