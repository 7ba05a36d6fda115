"""Training checkpoints in safetensors format, never pickles.

Lightning's checkpoint is a nested dict (weights, optimizer state, schedulers, loop progress, callback
state, hyper-parameters). Every tensor in it goes into a safetensors file under its path in the dict;
everything else (ints, floats, strings, lists, dicts with int or str keys) goes into a JSON skeleton
stored in the same file's header metadata. Loading never runs code from the file. The CLI installs this
as the trainer's CheckpointIO, so ``--ckpt_path last`` resumes from these files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "anyalign-checkpoint/1"


def _encode(obj: Any, path: str, tensors: dict, seen: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        ptr = (t.data_ptr(), t.numel(), t.dtype) if t.numel() else None
        if ptr in seen:  # tied weights share storage, which safetensors refuses: store a copy
            t = t.clone()
        seen[ptr] = path
        tensors[path] = t
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, f"{path}/k{i}", tensors, seen), _encode(v, f"{path}/{i}", tensors, seen)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors, seen) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return {"__repr__": repr(obj)}  # an object JSON cannot hold: kept readable, restored as its repr


def _decode(obj: Any, tensors) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors.get_tensor(obj["__tensor__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return obj.get("__repr__")


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(checkpoint, "c", tensors, {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "skeleton": json.dumps(skeleton)})
    os.replace(tmp, path)  # a crash while saving never leaves a half-written checkpoint


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        f = safe_open(str(path), framework="pt", device=str(map_location))
    except Exception as e:  # safetensors' own error type; a pickle (torch.save) file lands here
        raise ValueError(f"{path} is not an anyalign safetensors checkpoint ({e}); pickle checkpoints are not "
                         "loaded") from None
    with f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an anyalign safetensors checkpoint (format {meta.get('format')!r}); "
                             "pickle checkpoints are not loaded")
        return _decode(json.loads(meta["skeleton"]), f)


def checkpoint_step(path: str | Path) -> int | None:
    """The optimizer step a checkpoint was saved at, read from its header only (no tensor is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            skeleton = json.loads((f.metadata() or {}).get("skeleton", "null"))
    except Exception:
        return None
    items = skeleton.get("__dict__", []) if isinstance(skeleton, dict) else []
    step = next((v for k, v in items if k == "global_step"), None)
    return step if isinstance(step, int) else None


class SafetensorsCheckpointIO(CheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(path, "cpu")

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


RUNS = "lightning_logs"  # <default_root_dir>/lightning_logs/version_N/: one run (logs, checkpoints/, curves, export)


def run_dir(root: str | Path, version: int) -> Path:
    """Run ``version`` of a config whose ``trainer.default_root_dir`` is ``root``."""
    return Path(root) / RUNS / f"version_{version}"


def next_version(root: str | Path) -> int:
    """The number a new run of ``root`` takes: one past the highest ``version_N`` (as Lightning's loggers count)."""
    runs = Path(root) / RUNS
    numbers = [int(d.name[8:]) for d in runs.glob("version_*") if d.is_dir() and d.name[8:].isdigit()]
    return max(numbers, default=-1) + 1


def last_checkpoints(root: str | Path) -> list[Path]:
    """Every ``last*.ckpt`` of ``root``'s runs, oldest first (by modification time, then run number): each run's
    ``checkpoints/`` and ``root/checkpoints/`` (runs with ``--trainer.logger false``, older layouts; a link to the
    latest run's folder is counted once)."""
    root = Path(root)
    found = {}
    for folder in [*(root / RUNS).glob("version_*/checkpoints"), root / "checkpoints"]:
        for p in folder.glob("last*.ckpt"):
            found.setdefault(p.resolve(), p)
    def order(p: Path):
        version = run_version(p, root)
        return p.stat().st_mtime, -1 if version is None else version
    return sorted(found.values(), key=order)


def run_version(checkpoint: str | Path, root: str | Path) -> int | None:
    """N if ``checkpoint`` lies in ``root``'s run ``version_N/checkpoints/`` (links followed), else None."""
    folder = Path(checkpoint).resolve().parent
    runs = (Path(root) / RUNS).resolve()
    if folder.name == "checkpoints" and folder.parent.parent == runs and folder.parent.name.startswith("version_"):
        number = folder.parent.name[8:]
        return int(number) if number.isdigit() else None
    return None


def resolve_checkpoint(spec: str, run_dir: str | Path) -> Path:
    """A checkpoint path, or ``last``: the newest ``last*.ckpt`` of any run of the config whose
    ``trainer.default_root_dir`` is ``run_dir`` (each run keeps its own ``lightning_logs/version_N/checkpoints/``;
    ``run_dir/checkpoints/`` is looked at too)."""
    if spec != "last":
        return Path(spec)
    found = last_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no last*.ckpt in {Path(run_dir) / RUNS}/version_*/checkpoints or "
                                f"{Path(run_dir) / 'checkpoints'}: has this config been trained?")
    return found[-1]


def load_weights(module, spec: str, run_dir: str | Path) -> Path:
    """Load a training checkpoint's weights (``spec``: a path or ``last``) into ``module``, which must be built
    as the checkpoint's run was; -> the checkpoint's path."""
    path = resolve_checkpoint(spec, run_dir)
    missing, unexpected = module.load_state_dict(load_checkpoint(path)["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model this config builds: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    return path
