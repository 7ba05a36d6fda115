"""Benchmark training steps: shared vs concatenated layout; reference model frozen, precomputed or none.

    python tools/bench.py --config configs/video_dpo.yaml [--steps 10 --warmup 3 --repeats 3] [-- overrides]

Each variant runs in its own process (so peak memory is its own) through ``trainer.fit``, the code path of
``python -m anyalign fit`` (data loading in the main process, not timed): warm-up steps, then ``repeats``
blocks of ``steps`` timed optimizer steps (forward, reference forward if any, backward, optimizer step;
timed between Lightning's batch-start and batch-end hooks). Prints
samples/s (pairs), tokens/s (non-padding positions the LM processed, media included), peak memory
(CUDA allocator peak on GPU, process max RSS on CPU), the reference model's tensors held in memory
(``ref MiB``: a frozen copy's weights, adapter_disabled's projector snapshot, nothing when precomputed),
achieved model TFLOP/s and MFU (6N per policy token, 2N per reference token; on GPUs with a known bf16
peak, or ``--peak-tflops``) and each variant's speed relative to the concatenated layout with a frozen reference. The ``precomputed`` variant first runs
``python -m anyalign precompute`` into a temporary cache (a one-off cost, timed and printed apart).

The ``+packed`` variants train packed rows (``data.packing: true``: the batch's pairs in as few rows of
``data.max_length`` tokens as fit); each is compared with the same variant unpacked (tokens/s, peak memory,
rows per batch, padding), and the initial policy's log-probs of the first training batches are compared
packed vs unpacked. ``--skewed`` trains on a length-skewed multi-image set built at run time:

    python tools/bench.py --config configs/multi_image_dpo.yaml --skewed --threads 1 --rounds 5 \
        --variants shared+frozen_copy,shared+packed+frozen_copy -- --data.max_length 512

``--packing N`` trains the ``+packed`` variants with ``data.packing: N`` (rows of up to N tokens) instead of
``true``. The script imports the anyalign of the tree it lives in (its children too), whatever checkout the
environment's editable install points at.

``--k-responses K`` compares one K-response row per prompt with the pairwise expansion of the same ranking
(K(K-1)/2 pairs per prompt) on video with 256 media tokens per clip (``VideoAdapter`` 16 frames x 16 patches),
built at run time by ``tools/make_k_data.py`` from the demo clips: the pairs in the duplicated (concatenated)
layout and in shared rows (each pair its own row, sigmoid), and the K responses in one row (``pairwise_expansion``,
the same objective: DPO on every ordered pair, averaged). Every variant trains the same prompts per step (the
pair variants take K(K-1)/2 times the batch size); the headline figure is prompts/s:

    python tools/bench.py --config configs/video_dpo.yaml --k-responses 4 --threads 2 --rounds 3 \
        --steps 4 --repeats 2 -- --data.batch_size 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this tree's anyalign, not whichever checkout the environment installed (an editable install points at one
# checkout; a script's own directory, not the working directory, heads sys.path): here and in the children
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

VARIANTS = {
    "concatenated+frozen_copy": ["--data.layout", "concatenated", "--model.reference", "frozen_copy"],
    "shared+frozen_copy": ["--data.layout", "shared", "--model.reference", "frozen_copy"],
    "shared+precomputed": ["--data.layout", "shared", "--model.reference", "precomputed", "--model.reference_cache",
                           "{cache}"],
    "concatenated+none(sft)": ["--data.layout", "concatenated", "--model.losses", '[{"name": "sft"}]'],
    "shared+none(sft)": ["--data.layout", "shared", "--model.losses", '[{"name": "sft"}]'],
    # packed rows (data.packing): several pairs per row up to data.max_length tokens, the same pairs per batch
    "shared+packed+frozen_copy": ["--data.layout", "shared", "--data.packing", "{packing}", "--model.reference",
                                  "frozen_copy"],
    "shared+packed+none(sft)": ["--data.layout", "shared", "--data.packing", "{packing}", "--model.losses",
                                '[{"name": "sft"}]'],
}

# K responses per prompt (--k-responses): the shards and batch sizes are filled in at run time ({k_*})
K_VIDEO = ["--model.adapters", json.dumps({"video": {"class_path": "modalities.VideoAdapter", "init_args": {
    "encoder": "assets/tiny-siglip", "num_frames": 16, "spatial_pool": 1}}}), "--data.max_length", "512",
    "--model.reference", "frozen_copy", "--data.shuffle_buffer", "1"]
K_VARIANTS = {
    "pairs+concatenated+frozen_copy": ["--data.layout", "concatenated", "--data.train_shards", "{k_pairs}",
                                       "--data.batch_size", "{k_pair_batch}", *K_VIDEO],
    "pairs+shared+frozen_copy": ["--data.layout", "shared", "--data.train_shards", "{k_pairs}",
                                 "--data.batch_size", "{k_pair_batch}", *K_VIDEO],
    "k_row+shared+frozen_copy": ["--data.layout", "shared", "--data.train_shards", "{k_ranked}",
                                 "--data.batch_size", "{k_batch}", "--model.losses",
                                 '[{"name": "pairwise_expansion"}]', *K_VIDEO],
}


class StepTimer:
    """Times optimizer steps inside ``trainer.fit`` (forward, reference, backward, optimizer step: the hooks
    around ``training_step``), keeps the batches' shapes, and resets the CUDA peak after the warm-up."""

    def __init__(self, warmup: int):
        import lightning as L

        class _Timer(L.Callback):
            def on_train_batch_start(cb, trainer, module, batch, batch_idx):
                self._sync(module)
                if batch_idx == warmup and module.device.type == "cuda":
                    import torch
                    torch.cuda.reset_peak_memory_stats()
                self.t0, self.c0 = time.perf_counter(), time.process_time()

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                self._sync(module)
                if batch_idx >= warmup:
                    self.times.append(time.perf_counter() - self.t0)
                    self.cpu.append(time.process_time() - self.c0)
                    self.batches.append({"pairs": len(batch["keys"]), "tokens": int((batch["roles"] >= 0).sum()),
                                         "rows": batch["roles"].shape[0], "padded": batch["roles"].numel(),
                                         "scored": int((batch["target_seq"] >= 0).sum()),
                                         "media": int(sum((batch["input_ids"] == t).sum()
                                                          for t in module.policy.media_token_ids.values()))})
        self.callback, self.times, self.cpu, self.batches, self.t0, self.c0 = _Timer(), [], [], [], 0.0, 0.0

    @staticmethod
    def _sync(module):
        if module.device.type == "cuda":
            import torch
            torch.cuda.synchronize()


def run_variant(config: str, extra: list[str], steps: int, warmup: int, repeats: int, threads: int) -> dict:
    """One variant through ``trainer.fit``, the code path of ``python -m anyalign fit``: warm-up steps, then
    ``steps * repeats`` timed steps, reported as ``repeats`` blocks of ``steps``."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from anyalign.cli import build_cli

    total = warmup + steps * repeats
    cli = build_cli(["--config", config, "--data.num_workers", "0", "--trainer.max_steps", str(total),
                     "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                     "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
                     "--trainer.num_sanity_val_steps", "0", "--model.export_dir", "null", *extra])
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    timer = StepTimer(warmup)
    trainer.callbacks.append(timer.callback)
    trainer.fit(module, datamodule=data)
    device = module.device
    times = [sum(timer.times[i * steps:(i + 1) * steps]) for i in range(repeats)]
    blocks = [timer.batches[i * steps:(i + 1) * steps] for i in range(repeats)]
    # rates per block, then the median block: blocks of a length-skewed set hold different token counts
    tokens_per_s = statistics.median(sum(b["tokens"] for b in blk) / t for blk, t in zip(blocks, times))
    # the same per CPU-second of this process (all its threads): on a shared machine, less swayed by the others
    cpu = [sum(timer.cpu[i * steps:(i + 1) * steps]) for i in range(repeats)]
    tokens_per_cpu_s = statistics.median(sum(b["tokens"] for b in blk) / t for blk, t in zip(blocks, cpu))
    timed = blocks[0]  # one block's work, for the per-pair and FLOP figures
    pairs, tokens = sum(b["pairs"] for b in timed), sum(b["tokens"] for b in timed)
    scored, media = sum(b["scored"] for b in timed), sum(b["media"] for b in timed)
    best = statistics.median(times)
    samples_per_s = statistics.median(sum(b["pairs"] for b in blk) / t for blk, t in zip(blocks, times))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    ref = module.reference
    ref_mib = sum(t.numel() * t.element_size() for t in ref.held_tensors()) / 2**20
    # model FLOPs per timed block, 6N per token for the policy (forward + backward) and 2N for a reference
    # forward (PaLM's convention, attention scores left out): N = the LM's non-embedding weights, over every
    # non-padding position (the duplicated prompt of the concatenated layout counts: the GPU does that work);
    # the LM head only at scored positions (anyalign never computes the others)
    lm = module.policy.lm
    emb = {id(p) for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) for p in m.parameters()}
    n_body = sum(p.numel() for p in lm.parameters() if id(p) not in emb)
    head = lm.get_output_embeddings().weight.numel()
    flops = (6 + 2 * ref.runs_model) * (n_body * tokens + head * scored)
    rows = sum(b["rows"] for b in timed)
    return {"samples_per_s": samples_per_s, "reference_mib": ref_mib, "tflops_per_s": flops / best / 1e12,
            "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."), "tokens_per_s": tokens_per_s, "peak_mib": peak,
            "tokens_per_cpu_s": tokens_per_cpu_s,
            "seconds": times, "pairs": pairs, "tokens": tokens, "media_tokens": media, "response_tokens": scored,
            "rows": rows, "padded": sum(b["padded"] for b in timed),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def check_logps(config: str, overrides: list[str], batches: int = 2, packing: str = "true") -> dict:
    """The initial policy's log-probs of the same training examples in unpacked and in packed rows (the config's
    layout, fp32 unless the config says otherwise, no dropout): the largest difference over every sequence."""
    import itertools

    import torch
    from anyalign.cli import build_cli
    from anyalign.data.collate import Collator
    from anyalign.data.pipeline import Skipped, read_shards
    from anyalign.data.scan import example_stages

    cli = build_cli(["--config", config, "--data.num_workers", "0", "--trainer.logger", "false", *overrides,
                     "--data.packing", packing])
    module, data = cli.model, cli.datamodule
    data.bind(module.policy, module.negatives, module.needs, module.reference)
    if not data.packing:
        return {"error": "this model trains unpacked rows (see the warning)"}
    policy = module.policy.eval()
    src = read_shards(iter(data.train_urls))
    for stage in example_stages(data):
        src = stage(src)
    examples = list(itertools.islice((x for x in src if not isinstance(x, Skipped)), batches * data.batch_size))
    negatives = data.negatives if data.train_negatives else None
    worst, sequences, shapes = 0.0, 0, []
    for i in range(0, len(examples), data.batch_size):
        chunk, out = examples[i:i + data.batch_size], []
        for pack in (None, data.pack_length):
            batch = Collator(data.layout, policy.tokenizer.pad_token_id, dict(policy.adapters.items()),
                             data.pad_to_multiple_of, negatives, data.seed, pack)(chunk)
            with torch.no_grad():
                out.append(policy(batch).logps[torch.cat(list(batch["index"].values()))].float())
            shapes.append(list(batch["input_ids"].shape))
        worst = max(worst, float((out[0] - out[1]).abs().max()))
        sequences += len(out[0])
    return {"max_abs_diff": worst, "sequences": sequences, "shapes": shapes}


def _override(overrides: list[str], key: str, default: int) -> int:
    """The last value given for ``key`` among the ``--`` overrides (``--key value`` or ``--key=value``)."""
    value = default
    for i, a in enumerate(overrides):
        if a == key and i + 1 < len(overrides):
            value = int(overrides[i + 1])
        elif a.startswith(key + "="):
            value = int(a.split("=", 1)[1])
    return value


# dense bf16 tensor-core peaks, TFLOP/s (vendor datasheets, SXM parts); MFU is printed for these or --peak-tflops
PEAK_BF16 = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}


def peak_tflops(device: str, dtype: str, given: float | None) -> float | None:
    if given:
        return given
    if dtype != "bfloat16":
        return None
    return next((v for k, v in PEAK_BF16.items() if k in device), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per repeat (distinct batches)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="run every variant this many times, interleaved, "
                    "and report the median round (min-max shown): for noisy shared machines")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: bf16 peak of "
                    "known GPUs with --model.torch_dtype bfloat16)")
    ap.add_argument("--skewed", action="store_true", help="train on a length-skewed multi-image set built at run "
                    "time into a temporary directory (tools/make_skewed_data.py: responses 5-300 tokens, 1-4 images "
                    "per prompt); use with --config configs/multi_image_dpo.yaml")
    ap.add_argument("--k-responses", type=int, metavar="K", help="one K-response row per prompt vs the pairwise "
                    "expansion (K(K-1)/2 pairs) in the duplicated layout and in shared rows, on video with 256 media "
                    "tokens per clip built at run time (tools/make_k_data.py); use with --config configs/video_dpo.yaml "
                    "and -- --data.batch_size B (prompts per step)")
    ap.add_argument("--packing", default="true", help="data.packing of the +packed variants: true (rows of "
                    "data.max_length tokens) or a row length in tokens (default: true)")
    ap.add_argument("--k-prompts", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--subst", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-logps", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides after --, e.g. -- --data.batch_size 4")
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_logps:
        print(json.dumps(check_logps(args.config, args.overrides, packing=args.packing)))
        return
    if args.child:
        subst = {"{cache}": args.cache or "", "{packing}": args.packing, **json.loads(args.subst)}
        extra = list(VARIANTS.get(args.child) or K_VARIANTS[args.child])
        for key, value in subst.items():
            extra = [a.replace(key, str(value)) for a in extra]
        # the K variants' shards and batch sizes come after the caller's overrides, so they win
        order = args.overrides + extra if args.child in K_VARIANTS else extra + args.overrides
        print(json.dumps(run_variant(args.config, order, args.steps, args.warmup, args.repeats, args.threads)))
        return
    results, notes = {}, []
    names = args.variants.split(",")
    cache = tempfile.mkdtemp(prefix="anyalign-bench-cache-")
    subst: dict = {}
    per_prompt = {}  # samples per prompt of each variant (K mode: pairs per prompt for the pair variants)
    if args.k_responses:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_k_data import build as build_k
        made = build_k(Path(cache) / "k", args.k_responses, args.k_prompts)
        batch = _override(args.overrides, "--data.batch_size", 2)
        npairs = made["pairs_per_prompt"]
        subst = {"{k_pairs}": made["pairs"], "{k_ranked}": made["ranked"], "{k_batch}": batch,
                 "{k_pair_batch}": batch * npairs}
        names = [n for n in names if n in K_VARIANTS] or list(K_VARIANTS)
        per_prompt = {n: (npairs if n.startswith("pairs") else 1) for n in names}
        notes.append(f"K = {args.k_responses} ranked responses per prompt, {made['prompts']} video prompts (256 media "
                     f"tokens per clip); the pair variants train the pairwise expansion, {npairs} pairs per prompt, "
                     f"{batch * npairs} pairs per step; the K-row variant {batch} prompts per step")
    if args.skewed:  # the data go first, so later overrides still win
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_skewed_data import build
        made = build(Path(cache) / "skewed")
        args.overrides = ["--data.train_shards", made["train"], "--data.val_shards", made["val"], *args.overrides]
        resp = sorted(x for c, r, _ in made["lengths"] for x in (c, r))
        notes.append(f"length-skewed set: {len(made['lengths'])} pairs, responses {resp[0]}-{resp[-1]} tokens "
                     f"(median {resp[len(resp) // 2]}), 1-4 images per prompt")
    if any("{cache}" in VARIANTS.get(n, ()) for n in names):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "anyalign", "precompute", "--config", args.config,
                              "--model.reference", "precomputed", "--model.reference_cache", cache,
                              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", *args.overrides],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"precompute failed:\n{out.stderr[-3000:]}")
        notes.append(f"precompute (one-off, all train + val shards, default threads): {time.perf_counter() - t0:.1f} s "
                     f"wall, process start included: {out.stdout.strip().splitlines()[-1]}")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):  # variants interleaved, so a slow spell of a shared machine hits them all
        for name in names:
            cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads), "--child", name,
                   "--packing", args.packing,
                   "--cache", cache, "--subst", json.dumps(subst), "--", *args.overrides]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for name, rs in runs.items():  # the median round by samples/s; peak memory is the largest seen
        for r in rs:
            r["prompts_per_s"] = r["samples_per_s"] / per_prompt.get(name, 1)
        rs = sorted(rs, key=lambda r: r["samples_per_s"])
        results[name] = {**rs[len(rs) // 2], "peak_mib": max(r["peak_mib"] for r in rs),
                         "range": (rs[0]["samples_per_s"], rs[-1]["samples_per_s"]),
                         "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in rs)}
    first = next(iter(results.values()))
    print(f"config {args.config} {' '.join(args.overrides)} | device {first['device']} | {args.steps} steps x "
          f"{args.repeats} repeats after {args.warmup} warm-up, {args.rounds} round(s) | threads {args.threads or 'default'} | per pair: "
          f"{first['media_tokens'] / first['pairs'] / (2 if 'concatenated' in next(iter(results)) else 1):.0f} "
          f"media tokens")
    base = results.get("concatenated+frozen_copy")
    print(f"{'variant':28s} {'samples/s':>10s} {'tokens/s':>10s} {'peak MiB':>9s} {'ref MiB':>8s} {'TFLOP/s':>8s} "
          f"{'MFU':>6s} {'vs concat+ref':>13s}  samples/s range")
    for name, r in results.items():
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        peak = peak_tflops(r["device"], r["dtype"], args.peak_tflops)
        mfu = f"{100 * r['tflops_per_s'] / peak:5.1f}%" if peak else "-"
        print(f"{name:28s} {r['samples_per_s']:10.1f} {r['tokens_per_s']:10.0f} {r['peak_mib']:9.0f} "
              f"{r['reference_mib']:8.2f} {r['tflops_per_s']:8.3f} {mfu:>6s} {ratio:>13s}  "
              f"{r['range'][0]:.1f}-{r['range'][1]:.1f}")
    for name, r in results.items():  # packed against the same variant unpacked: the padding-free gain
        plain = results.get(name.replace("+packed", ""))
        if "+packed" in name and plain:
            print(f"{name} vs {name.replace('+packed', '')}: tokens/s {r['tokens_per_s'] / plain['tokens_per_s']:.2f}x "
                  f"({r['tokens_per_s']:.0f} vs {plain['tokens_per_s']:.0f}; per CPU-second of the process "
                  f"{r['tokens_per_cpu_s'] / plain['tokens_per_cpu_s']:.2f}x, {r['tokens_per_cpu_s']:.0f} vs "
                  f"{plain['tokens_per_cpu_s']:.0f}), "
                  f"peak memory {r['peak_mib']:.0f} vs {plain['peak_mib']:.0f} MiB; rows per batch "
                  f"{r['rows'] / args.steps:.1f} vs {plain['rows'] / args.steps:.1f}, padding "
                  f"{100 * (1 - r['tokens'] / r['padded']):.0f}% vs {100 * (1 - plain['tokens'] / plain['padded']):.0f}% "
                  f"of the row positions")
    if any("+packed" in n for n in names):
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--child-logps", "--packing",
                              args.packing, "--", *args.overrides],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"log-prob check failed:\n{out.stderr[-3000:]}")
        check = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"log-probs, packed vs unpacked rows (initial policy, first training batches): max |difference| "
              f"{check['max_abs_diff']:.2e} over {check['sequences']} sequences" if "error" not in check
              else f"log-probs not compared: {check['error']}")
    if per_prompt:  # K responses: prompts/s, the same prompts and preferences in every variant
        k_row = results.get("k_row+shared+frozen_copy")
        for name, r in results.items():
            rng = [x / per_prompt[name] for x in r["range"]]
            prompts = r["pairs"] / per_prompt[name]  # one timed block's prompts
            print(f"{name}: {r['prompts_per_s']:.2f} prompts/s ({rng[0]:.2f}-{rng[1]:.2f} over rounds), "
                  f"{r['tokens_per_s']:.0f} LM tokens/s, {r['tokens'] / prompts:.0f} LM tokens and "
                  f"{r['rows'] / prompts:.1f} rows per prompt, peak {r['peak_mib']:.0f} MiB")
        if k_row:
            for name, r in results.items():
                if name != "k_row+shared+frozen_copy":
                    print(f"one K-response row vs {name}: {k_row['prompts_per_s'] / r['prompts_per_s']:.2f}x prompts/s")
    for note in notes:
        print(note)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
