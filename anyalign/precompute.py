"""``python -m anyalign precompute --config my.yaml``: the reference model runs once, before training.

    python -m anyalign precompute --config my.yaml   # my.yaml: model.reference: precomputed, model.reference_cache: DIR
    python -m anyalign fit --config my.yaml

``precompute`` builds the run exactly as ``fit`` would (same seed, so the same initial policy, which is
the reference), streams every training and held-out shard once in order, and stores per sample the
reference log-prob sums and token counts of the sequences the loss terms need
(``anyalign/reference/cache.py``). Training reads them in the data workers next to the sample; no
reference model is built.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from .cli import build_cli
from .reference.cache import VERSION, CacheWriter, _sha


def main(args: list[str]) -> None:
    """``python -m anyalign precompute --config X [overrides]``: write model.reference_cache for config X."""
    cli = build_cli(args, prog="python -m anyalign precompute",
                    description="Reference log-probs for model.reference: precomputed, written to "
                                "model.reference_cache (same config as fit).")
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    ref = module.reference
    if ref.name == "none":
        raise SystemExit(f"precompute: the loss terms {[t['name'] for t in module.terms]} need no reference model; "
                         "there is nothing to precompute")
    if ref.name != "precomputed":
        raise SystemExit("precompute: set model.reference: precomputed and model.reference_cache: DIR in the config "
                         f"(it has model.reference={module.hparams.reference!r})")
    data.bind(module.policy, module.negatives, module.needs)  # the cache is what is being written: no check
    manifest = {"version": VERSION, "fingerprint": {"model": ref.model_fp, "template": ref.template_fp,
                                                     "data": data.reference_fingerprint(ref.sequences)},
                "sequences": ref.sequences, "precision": str(trainer.precision),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "shards": data.all_urls()}
    fingerprint = _sha(manifest["fingerprint"])
    manifest["fingerprint"]["all"] = fingerprint
    if trainer.is_global_zero:
        (Path(ref.cache.path) / "manifest.json").unlink(missing_ok=True)  # a run that dies leaves no cache
        for old in (Path(ref.cache.path) / "shards").glob("*.safetensors"):
            old.unlink(missing_ok=True)
    writer = CacheWriter(ref.cache.path, fingerprint, manifest)

    class Collect(L.Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            writer.add(outputs or [])

    trainer.callbacks.append(Collect())
    t0 = time.perf_counter()
    trainer.predict(module, dataloaders=data.precompute_dataloader(), return_predictions=False)
    n = writer.write(trainer.global_rank)
    skipped = len(module.skipped)
    print(f"precompute: rank {trainer.global_rank} stored reference log-probs of {n} samples "
          f"({', '.join(ref.sequences)}) in {ref.cache.path} in {time.perf_counter() - t0:.1f} s; "
          f"{skipped} bad samples skipped")
