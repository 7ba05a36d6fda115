"""``python -m anyalign predict``: answers from a model, one JSON line per prompt.

    python -m anyalign predict --model runs/video_dpo/lightning_logs/version_0/export \\
        --input assets/data/video/val-000.tar --output answers.jsonl
    python -m anyalign predict --config configs/video_dpo.yaml --ckpt_path last --input prompts.jsonl

The model is an export (``--model``, as ``fit`` writes it) or the one a config builds (``--config``: its
initial weights, or a training checkpoint's with ``--ckpt_path PATH|last``; ``last`` is the newest ``last*.ckpt`` of
the config's runs, each in its own ``lightning_logs/version_N/checkpoints/``). Inputs are shards (paths or
brace patterns: each sample's prompt and media, read by the adapters as training reads them) or JSONL files
of ``{"key": ..., "prompt": str | messages, "system"?: str, "media": {"video": ["clip.mp4"], ...}}`` with
media paths relative to the JSONL file. A sample that cannot be read is skipped with its reason. Output
lines: ``{"key", "prompt", "response", "tokens", "seconds"}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

from modalities.base import BadSample

from .data.loading import expand_shards
from .data.pipeline import Skipped, decode, read_shards
from .generation import generate, prepare


def load_model(model: str | None, config: str | None, ckpt_path: str | None, overrides: list[str] = ()):
    """An export directory, or the policy a config builds (optionally with a checkpoint's weights)."""
    if model:
        from .export import load_aligned
        return load_aligned(model)
    from .checkpoint import load_weights
    from .cli import build_cli
    cli = build_cli(["--config", config, *overrides])
    if ckpt_path:
        try:
            load_weights(cli.model, ckpt_path, cli.trainer.default_root_dir)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"predict: {e}") from None
    return cli.model.policy


def read_inputs(inputs: list[str], model) -> Iterator[dict | Skipped]:
    """Samples for ``generate`` from shards and JSONL files, in order; unreadable ones as ``Skipped``."""
    adapters = dict(model.adapters.items())
    for spec in inputs:
        if spec.endswith(".jsonl"):
            base = Path(spec).parent
            for n, line in enumerate(Path(spec).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or "prompt" not in row:
                        raise BadSample("a line needs a JSON object with 'prompt'")
                    media = {m: [str(base / p) for p in paths] for m, paths in (row.get("media") or {}).items()}
                    yield {**row, "key": str(row.get("key", f"{Path(spec).name}:{n}")), "media": media}
                except (ValueError, BadSample) as e:
                    yield Skipped(spec, f"line {n}", str(e))
            continue
        for ex in decode(read_shards(iter(expand_shards(spec, "--input"))), adapters):
            yield ex if isinstance(ex, Skipped) else {"key": ex["key"], "messages": ex["messages"],
                                                      "media": ex["media"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anyalign predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an exported model directory (what fit writes)")
    src.add_argument("--config", help="a training config: the model it builds")
    p.add_argument("--ckpt_path", help="with --config: a training checkpoint, or 'last' (the newest last*.ckpt of the "
                                        "config's runs, trainer.default_root_dir/lightning_logs/version_*/checkpoints)")
    p.add_argument("--input", nargs="+", required=True, help="shards (paths, brace patterns) and/or .jsonl files")
    p.add_argument("--output", default="-", help="JSONL to write (default: standard output)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args(argv)
    if a.ckpt_path and not a.config:
        p.error("--ckpt_path goes with --config")
    model = load_model(a.model, a.config, a.ckpt_path)
    samples, skipped = [], []
    for s in read_inputs(a.input, model):
        (skipped if isinstance(s, Skipped) else samples).append(s)
    ready = []
    for s in samples:  # media decoded here, once; a bad item skips only its sample
        try:
            ready.append((s, prepare(model, s)))
        except (BadSample, OSError) as e:
            skipped.append(Skipped("", s["key"], f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)))
    answers = generate(model, [s for s, _ in ready], a.max_new_tokens, a.temperature, a.top_p, a.stop, a.seed,
                       a.batch_size, prepared=[p for _, p in ready])
    out = sys.stdout if a.output == "-" else open(a.output, "w")
    try:
        for ans in answers:
            out.write(json.dumps(ans, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    for sk in skipped:
        print(f"[anyalign] skipped {sk.key} ({sk.url}): {sk.reason}", file=sys.stderr)
    print(f"[anyalign] {len(answers)} answers" + (f" written to {a.output}" if a.output != "-" else "")
          + f"; {len(skipped)} skipped", file=sys.stderr)
    return 0 if answers else 1
