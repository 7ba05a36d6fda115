"""Export and reload an aligned model in Hugging Face format.

Layout of an export directory::

    lm/                       the causal LM and its tokenizer (save_pretrained, safetensors)
    adapters/<name>/          adapter.safetensors (its full state dict) + whatever it needs to be rebuilt
                              (e.g. encoder/ with the vision encoder's config)
    anyalign.json             adapter class paths and init args, model settings
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .model import MultimodalLM


def _class_path(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def save_aligned(model: MultimodalLM, directory: str | Path) -> Path:
    """A pretrained family's model is written in its own format (``FamilyLM.save_pretrained``); an assembled one
    in the layout above."""
    if hasattr(model, "save_pretrained"):
        return model.save_pretrained(directory)
    out = Path(directory)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    lm = model.lm
    if hasattr(lm, "merge_and_unload"):  # LoRA: export the merged weights, a plain HF model
        lm = copy.deepcopy(lm).merge_and_unload()
    lm.save_pretrained(out / "lm")
    model.tokenizer.save_pretrained(out / "lm")
    adapters = {}
    for name, adapter in model.adapters.items():
        d = out / "adapters" / name
        d.mkdir(parents=True, exist_ok=True)
        overrides = adapter.export(d)
        # paths written relative to the export, so the directory can be moved as a whole
        overrides = {k: str(Path(v).relative_to(out)) if isinstance(v, str) and Path(v).is_relative_to(out)
                     else v for k, v in overrides.items()}
        state = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
        save_file(state, str(d / "adapter.safetensors"))
        adapters[name] = {"class_path": _class_path(adapter), "init_args": adapter.init_args | overrides,
                          "relative": sorted(overrides)}
    meta = {"format": "anyalign-export/1", "adapters": adapters}
    (out / "anyalign.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def load_aligned(directory: str | Path, trust_remote_code: bool = False) -> MultimodalLM:
    """Rebuild the exported MultimodalLM (LM, tokenizer with media tokens, adapters with their weights)."""
    import importlib

    src = Path(directory)
    meta_file = src / "anyalign.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"not an anyalign export (no anyalign.json): {src}")
    meta = json.loads(meta_file.read_text())
    adapters = {}
    for name, spec in meta["adapters"].items():
        module, _, cls_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        args = dict(spec["init_args"])
        for k in spec.get("relative", []):
            args[k] = str(src / args[k])
        adapters[name] = cls(**args)
    model = MultimodalLM(str(src / "lm"), adapters, trust_remote_code=trust_remote_code)
    for name, adapter in model.adapters.items():
        adapter.load_state_dict(load_file(str(src / "adapters" / name / "adapter.safetensors")))
    return model.eval()
