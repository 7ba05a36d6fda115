"""Where a training step's time goes, packed rows vs unpacked (``data.packing``): one variant per process.

    python tools/profile_packing.py --config configs/multi_image_dpo.yaml --skewed --threads 1 \
        [--packing true|false] [--steps 12 --warmup 2] [-- overrides]

Runs ``trainer.fit`` (the code path of ``python -m anyalign fit``, as ``tools/bench.py`` does) under
``torch.profiler`` for ``steps`` optimizer steps after ``warmup``, with labels around the parts of a step:
the attention mask, the media encoders (``embed``), the decoder of the policy and of the reference, the log-prob
gather, and the backward pass and optimizer step (Lightning's hooks). Attention itself (the SDPA kernel and
its backward, the ``repeat_kv`` copies) is read off the profiler's operator table. Prints milliseconds per
step for each part, the data side (rows, row length, padding, groups per row) and the share of the step that
the profiler saw. The profiler adds overhead per operator, so read shares, not absolute times; the step time
without the profiler is ``tools/bench.py``'s figure.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's anyalign, not whichever checkout the environment installed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--packing", default="true")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skewed", action="store_true", help="the length-skewed set of tools/make_skewed_data.py")
    ap.add_argument("--no-profiler", action="store_true", help="timers only (no per-operator table)")
    ap.add_argument("--segments-unpacked", action="store_true", help="measurement only: unpacked rows also take "
                    "segment attention (each row one group, its padding skipped), to tell the share of the packed "
                    "gain that comes from skipping padding in attention, which unpacked rows could have too")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import tempfile

    import torch
    torch.set_num_threads(args.threads)
    import lightning as L
    from torch.profiler import ProfilerActivity, profile, record_function

    import anyalign.model as model_mod
    from anyalign.cli import build_cli

    overrides = list(args.overrides)
    if args.skewed:
        sys.path.insert(0, str(ROOT / "tools"))
        from make_skewed_data import build
        made = build(Path(tempfile.mkdtemp(prefix="anyalign-profile-")) / "skewed")
        overrides = ["--data.train_shards", made["train"], "--data.val_shards", made["val"], *overrides]

    wall: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(self, *a, **k):
            name = label(self) if callable(label) else label
            t0 = time.perf_counter()
            with record_function(name):
                out = fn(self, *a, **k)
            wall[name] = wall.get(name, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    def who(_):
        return "policy" if torch.is_grad_enabled() else "reference"

    M = model_mod.MultimodalLM
    if args.segments_unpacked:
        segments = M.segments

        def every_row(self, roles, groups, dtype, cache):
            if groups is None or int(groups.max()) <= 0:
                key = ("segments", dtype, roles.device)
                if key not in cache and self.attn_implementation == "sdpa":
                    from anyalign.attention import attention_segments
                    cache[key] = attention_segments(roles, torch.where(roles >= 0, 0, -1), dtype)
                return cache.get(key)
            return segments(self, roles, groups, dtype, cache)
        M.segments = every_row
    M._build_mask = timed("mask", M._build_mask)
    M.embed = timed(lambda s: f"embed ({who(s)})", M.embed)
    M.forward = timed(lambda s: f"forward ({who(s)})", M.forward)
    gather = model_mod.gather_logps

    def gather_timed(*a, **k):
        t0 = time.perf_counter()
        with record_function("gather_logps"):
            out = gather(*a, **k)
        wall["gather_logps"] = wall.get("gather_logps", 0.0) + time.perf_counter() - t0
        return out
    model_mod.gather_logps = gather_timed

    total = args.warmup + args.steps
    cli = build_cli(["--config", args.config, "--data.num_workers", "0", "--trainer.max_steps", str(total),
                     "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                     "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
                     "--trainer.num_sanity_val_steps", "0", "--model.export_dir", "null",
                     "--data.layout", "shared", "--model.reference", "frozen_copy", "--data.packing", args.packing,
                     *overrides])
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    state = {"prof": None, "t": 0.0, "cpu": 0.0, "steps": [], "cpu_steps": [], "batches": [], "marks": {}}
    prof = profile(activities=[ProfilerActivity.CPU]) if not args.no_profiler else contextlib.nullcontext()

    class Hooks(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == args.warmup:
                wall.clear()
                state["prof"] = prof.__enter__() or True
            state["t"], state["cpu"] = time.perf_counter(), time.process_time()

        def on_before_backward(self, trainer, module, loss):
            state["marks"]["b0"] = time.perf_counter()

        def on_after_backward(self, trainer, module):
            state["marks"]["b1"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now = time.perf_counter()
            if batch_idx < args.warmup:
                return
            m = state["marks"]
            wall["backward"] = wall.get("backward", 0.0) + m["b1"] - m["b0"]
            wall["after backward (optimizer, hooks)"] = wall.get("after backward (optimizer, hooks)", 0.0) + now - m["b1"]
            state["steps"].append(now - state["t"])
            state["cpu_steps"].append(time.process_time() - state["cpu"])
            roles = batch["roles"]
            groups = batch.get("groups")
            state["batches"].append({"rows": roles.shape[0], "T": roles.shape[1], "tokens": int((roles >= 0).sum()),
                                     "groups": int((groups.max(1).values + 1).sum()) if groups is not None else roles.shape[0],
                                     "sq": _attention_area(roles, groups)})
            if batch_idx == total - 1 and not args.no_profiler:
                prof.__exit__(None, None, None)

    trainer.callbacks.append(Hooks())
    trainer.fit(module, datamodule=data)
    n = len(state["steps"])
    step_ms = 1e3 * sum(state["steps"]) / n
    b = state["batches"]
    tokens, positions = sum(x["tokens"] for x in b), sum(x["rows"] * x["T"] for x in b)
    print(f"packing={args.packing} {' '.join(args.overrides)} | threads {args.threads} | {n} steps")
    # CPU time of the process (all its threads): less swayed than wall time
    # by other processes on a shared machine
    print(f"tokens/s {tokens / sum(state['steps']):.0f} wall, {tokens / sum(state['cpu_steps']):.0f} per CPU-second"
          f"{' (profiled)' if not args.no_profiler else ''}")
    print(f"step {step_ms:.1f} ms{' (profiled)' if not args.no_profiler else ''} | rows/batch {sum(x['rows'] for x in b) / n:.1f}, row length "
          f"{sum(x['T'] for x in b) / n:.0f}, groups/row {sum(x['groups'] for x in b) / sum(x['rows'] for x in b):.2f}, "
          f"tokens/batch {tokens / n:.0f}, padding {100 * (1 - tokens / positions):.0f}%")
    print(f"attention area per batch (query-key pairs in the kernel): rows x T^2 {sum(x['sq'][0] for x in b) / n / 1e3:.0f}k, "
          f"within groups {sum(x['sq'][1] for x in b) / n / 1e3:.0f}k, allowed by the slot mask "
          f"{sum(x['sq'][2] for x in b) / n / 1e3:.0f}k")
    print("part                                      ms/step  share")
    order = ["mask", "embed (policy)", "embed (reference)", "forward (policy)", "forward (reference)", "gather_logps",
             "backward", "after backward (optimizer, hooks)"]
    for k in order + [k for k in wall if k not in order]:
        if k in wall:
            print(f"  {k:40s} {1e3 * wall[k] / n:7.1f}  {100 * wall[k] / sum(state['steps']):4.0f}%")
    if not args.no_profiler:
        ops = {e.key: e for e in prof.key_averages()}

        def self_ms(pred):
            return sum(e.self_cpu_time_total for k, e in ops.items() if pred(k)) / 1e3 / n
        attn_f = self_ms(lambda k: "scaled_dot_product" in k and "backward" not in k)
        attn_b = self_ms(lambda k: "scaled_dot_product" in k and "backward" in k)
        print(f"  attention kernel, forward (both models)   {attn_f:7.1f}  (self time, profiler)")
        print(f"  attention kernel, backward                {attn_b:7.1f}")
        print("top operators by self CPU time (ms/step):")
        for e in sorted(ops.values(), key=lambda e: -e.self_cpu_time_total)[:18]:
            print(f"  {e.key[:60]:60s} {e.self_cpu_time_total / 1e3 / n:7.2f}  x{e.count // n}")


def _attention_area(roles, groups):
    """Query-key pairs per batch: what a dense kernel computes (rows x T^2), what lies inside one group
    (sum of group lengths squared), and what the slot mask allows (causal, slots apart)."""
    import torch
    rows, T = roles.shape
    dense = rows * T * T
    within, allowed = 0, 0
    g = groups if groups is not None else torch.where(roles >= 0, 0, -1)
    for r in range(rows):
        ids = g[r]
        for k in range(int(ids.max()) + 1):
            span = (ids == k).nonzero().flatten()
            n = len(span)
            within += n * n
            ro = roles[r, span]
            q, kk = ro[:, None], ro[None, :]
            idx = torch.arange(n)
            allowed += int(((idx[None, :] <= idx[:, None]) & ((kk == 0) | (kk == q))).sum())
    return dense, within, allowed


if __name__ == "__main__":
    main()
