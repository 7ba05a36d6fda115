"""Which modalities the converter knows, and what it takes from their adapters.

The built-in adapters by modality name come from ``modalities.registry`` (``ADAPTERS`` plus installed
packages' ``anyalign.modalities`` entry points); ``--adapter NAME=pkg.module.Class`` adds or replaces one,
for a modality defined outside anyalign. Only class attributes are read (``placeholder``, ``extensions``,
``container_extensions``): no adapter is constructed, so no encoder is loaded.
"""
from __future__ import annotations

import importlib
from typing import Mapping


def load_class(spec: str) -> type:
    """``pkg.module.Class`` (or ``pkg.module:Class``) -> that ModalityAdapter subclass."""
    from modalities.base import ModalityAdapter

    module, sep, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not (module and sep and name):
        raise ValueError(f"adapter class {spec!r}: expected pkg.module.Class")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"adapter class {spec!r}: {type(e).__name__}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, ModalityAdapter)):
        raise ValueError(f"adapter class {spec!r} is not a ModalityAdapter subclass")
    return cls


def parse_option(text: str) -> tuple[str, str]:
    """``NAME=pkg.module.Class`` -> (name, class path)."""
    name, sep, spec = text.partition("=")
    if not (sep and name.strip() and spec.strip()):
        raise ValueError(f"--adapter {text!r}: expected NAME=pkg.module.Class")
    return name.strip(), spec.strip()


def resolve(extra: Mapping[str, str | type] | None = None) -> dict[str, type]:
    """modality name -> adapter class: the registry's, then ``extra`` (class paths or classes) over them."""
    from modalities.registry import load_entry_points

    adapters = dict(load_entry_points())
    for name, spec in (extra or {}).items():
        cls = load_class(spec) if isinstance(spec, str) else spec
        if not cls.placeholder or not (cls.extensions or cls.container_extensions):
            raise ValueError(f"adapter {name}={cls.__module__}.{cls.__qualname__} declares no placeholder or "
                             "no extensions; the converter needs both")
        adapters[name] = cls
    return adapters


def markers(adapters: Mapping[str, type]) -> dict[str, str]:
    """modality name -> placeholder, for the adapters that have one."""
    return {name: cls.placeholder for name, cls in adapters.items() if cls.placeholder}


def accepted_extensions(adapters: Mapping[str, type]) -> dict[str, tuple[str, ...]]:
    """modality name -> the extensions its items may be written with: its ``extensions``, then those of its
    ``container_extensions`` that no other adapter reads as its own (an ``mp4`` written for audio would be
    read as video)."""
    own = {name: tuple(e.lower() for e in cls.extensions) for name, cls in adapters.items()}
    out = {}
    for name, cls in adapters.items():
        others = {e for n, exts in own.items() if n != name for e in exts}
        out[name] = own[name] + tuple(e.lower() for e in cls.container_extensions
                                      if e.lower() not in others and e.lower() not in own[name])
    return out
