"""``python -m anyalign evaluate``: held-out metrics of one or several models, as one table, ``eval.json`` and ``eval.png``.

    python -m anyalign evaluate --config configs/video_dpo.yaml \\
        --models initial runs/video_dpo/lightning_logs/version_0/export [--shards 'data/val-{000..001}.tar'] \\
        [--out eval/] [--max-new-tokens 24] [--limit N] [any --model.* / --data.* / --trainer.* override]

The config builds the run as ``fit`` does (same seed: the same initial policy, which is the reference; the data
settings; the negatives). Each of ``--models`` is ``initial`` (the config's initial policy), an export directory
(``load_aligned``: its policy replaces the module's, the reference stays the config's initial model), or a
training checkpoint (a path, or ``last``: the newest ``last*.ckpt`` of the config's runs), loaded into the module.
``--shards`` defaults to ``data.val_shards``. Per model:

1. preference accuracy, ties (apart, never half right), mean reward margin and loss: ``validate``'s own numbers
   on the shards (``evaluation/held_out.py``); for unpaired data (KTO) the accuracy is per sample, not per pair;
2. media reliance per (modality, operator): ``model.negatives``' entries, or every operator of each adapter whose
   media the shards hold; mean log p(chosen | media) - log p(chosen | corrupted media) under the policy;
3. for samples with ``answer``: greedy generation accuracy (normalised exact match, answer contained), and for
   samples with ``choices`` likelihood-choice accuracy (argmax by mean log-prob per token, the headline, and
   by summed log-prob) (``evaluation/answers.py``);
4. the rate of answers that do not change when one modality's media is replaced (answered without reading it).
   Parts 3-4 read the shards in windows of 64 samples; a replacement comes from the same window.

Bad samples are skipped, counted and named. ``--limit N``: the first N samples of the shards only.

Several processes (``--trainer.strategy ddp --trainer.devices N``): parts 1-2 run through the trainer (ranks split
the shards and their sums are reduced, as in ``validate``); in parts 3-4 each rank decodes and answers every N-th
window, and rank 0 gathers the records and writes the outputs. ``--limit`` caps each rank's held-out stream in
parts 1-2 (N samples in all on one process).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .cli import build_cli
from .evaluation.answers import answer_records, decode_window, summarize, windows
from .evaluation.held_out import media_reliance, preference, reliance_operators, validate_pass
from .evaluation.report import format_table, plot, write_json
from .predict import load_model


def model_kind(spec: str) -> str:
    if spec == "initial":
        return "initial"
    if spec == "last":
        return "checkpoint"
    p = Path(spec)
    if p.is_dir():
        if not (p / "anyalign.json").is_file() and not (p / "config.json").is_file():
            raise SystemExit(f"evaluate: {spec} is a directory but not an export (no anyalign.json, no config.json)")
        return "export"  # an anyalign export, or a pretrained family's (its own format; load_aligned tells)
    if p.is_file():
        return "checkpoint"
    raise SystemExit(f"evaluate: model {spec!r} is not 'initial', 'last', an export directory or a checkpoint file")


def load_checkpoint_into(module, trainer, spec: str) -> Path:
    """A training checkpoint's state dict into the module (``checkpoint.load_weights``, as predict loads it)."""
    from .checkpoint import load_weights
    try:
        return load_weights(module, spec, trainer.default_root_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"evaluate: {e}") from None


def _gather(obj, world: int) -> list:
    if world > 1 and dist.is_available() and dist.is_initialized():
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def evaluate_policy(trainer, module, data, a, operators) -> dict:
    """Every metric of the policy the module holds now."""
    module.bind_data(data)  # this policy's tokenizer and adapters; the config's negatives
    negatives, t0 = data.negatives, time.perf_counter()
    first = validate_pass(trainer, module, data, negatives, a.limit)
    out = {"preference": preference(first, data.unpaired),
           "media_reliance": {} if data.unpaired else media_reliance(trainer, module, data, operators, a.limit)}
    data.negatives = negatives
    skipped = {(u, k): r for u, k, r in first.skipped}
    policy, rank, world = module.policy, trainer.global_rank, trainer.world_size
    attn = policy.attn_implementation
    if attn == "flex_attention":  # generation and scoring run SDPA, as predict does
        policy.lm.set_attn_implementation("sdpa")
    policy.to(trainer.strategy.root_device)
    records, bad = [], []
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for w, raws in enumerate(windows(data.val_urls, a.limit)):
                if w % world != rank:  # several processes: every N-th window each
                    continue
                samples, bad_samples = decode_window(raws, dict(policy.adapters.items()))
                recs, bad_answers = answer_records(
                    policy, samples, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size or data.val_batch_size,
                    max_length=data.max_length, layout=data.layout)
                records += recs
                bad += bad_samples + bad_answers
    finally:
        policy.cpu()
        if attn == "flex_attention":
            policy.lm.set_attn_implementation(attn)
    gathered = _gather((records, [(s.url, s.key, s.reason) for s in bad]), world)
    records = sorted((r for recs, _ in gathered for r in recs), key=lambda r: r["key"])
    for _, bad_ in gathered:
        skipped |= {(u, k): r for u, k, r in bad_}
    out |= summarize(records)
    out["skipped"] = [{"url": u, "key": k, "reason": r} for (u, k), r in sorted(skipped.items())]
    out["answers"] = records
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anyalign evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Other --model.*, --data.* and --trainer.* options override the config.")
    p.add_argument("--config", required=True, help="the training config: model, reference, data settings, negatives")
    p.add_argument("--models", nargs="+", default=["initial"],
                   help="'initial', export directories, checkpoint files or 'last' (default: initial)")
    p.add_argument("--shards", nargs="+", help="held-out shards (paths, brace patterns; default: data.val_shards)")
    p.add_argument("--out", default="eval", help="directory for eval.json and eval.png (default: eval)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, help="prompts per generation batch (default: data.val_batch_size)")
    p.add_argument("--limit", type=int, help="evaluate the first N samples of the shards only")
    a, overrides = p.parse_known_args(argv)
    if a.limit is not None and a.limit < 1:
        p.error("--limit must be >= 1")
    specs = list(dict.fromkeys(a.models))
    kinds = {s: model_kind(s) for s in specs}
    args = ["--config", a.config, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    if a.shards:
        import json
        args += ["--data.val_shards", a.shards[0] if len(a.shards) == 1 else json.dumps(a.shards)]
    cli = build_cli(args + overrides, prog="python -m anyalign evaluate")
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    # one validate per pass: Lightning's per-run notices (callbacks overridden, ...) would repeat each time
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    if not data.val_urls:
        raise SystemExit("evaluate: no held-out shards: give --shards or set data.val_shards in the config")
    operators = reliance_operators(module.negatives, module.policy.adapters, data.val_urls)
    initial, results = module.policy, {}
    # the initial policy first: a checkpoint is loaded into its tensors, an export replaces it for its turn
    for spec in sorted(specs, key=lambda s: ("initial", "export", "checkpoint").index(kinds[s])):
        module.policy = initial
        if kinds[spec] == "export":
            module.policy = load_model(spec, None, None)
        elif kinds[spec] == "checkpoint":
            load_checkpoint_into(module, trainer, spec)
        results[spec] = {"model": spec, "kind": kinds[spec], **evaluate_policy(trainer, module, data, a, operators)}
        if trainer.is_global_zero:
            print(f"[anyalign] evaluated {spec} in {results[spec]['seconds']} s", file=sys.stderr)
    module.policy = initial
    if not trainer.is_global_zero:
        return 0
    results = {s: results[s] for s in specs}
    out = Path(a.out)
    report = {"config": a.config, "shards": data.val_urls, "limit": a.limit, "max_new_tokens": a.max_new_tokens,
              "world_size": trainer.world_size, "models": results}
    json_path = write_json(report, out / "eval.json")
    n = (next(iter(results.values())).get("preference") or {}).get("count")
    title = f"anyalign evaluate: {Path(a.config).name} on {len(data.val_urls)} shard(s)" + (f", {n} samples" if n else "")
    png = plot(results, out / "eval.png", title)
    skipped = {(s["url"], s["key"]): s["reason"] for r in results.values() for s in r["skipped"]}
    for (url, key), reason in sorted(skipped.items()):
        print(f"[anyalign] skipped {key} ({url}): {reason}")
    print(format_table(results))
    print(f"[anyalign] {len(skipped)} sample(s) skipped; wrote {json_path} and {png}")
    return 0
