"""Held-out reward accuracy of plain DPO and mDPO on the trap-prior tasks (``tools/make_trap_data.py``), per
modality and seed: does the conditional term make the model read its media where the training pairs reward a
language prior?

    python tools/bench_trap.py --out /tmp/trap [--modalities image video audio --methods dpo mdpo --seeds 0
        --steps 100 --extra "--model.lr 5e-3"]

``dpo`` is ``configs/{modality}_dpo.yaml``; ``mdpo`` adds the conditional and anchor terms (beta 0.1; ``--no_anchor``: the
conditional term only; ``--losses``: any list of terms) and the modality's negatives (``--negatives`` replaces them:
``'[{"op": "reverse"}]'``). Defaults (``NEGATIVES``): image ``crop_keep``
(mDPO's own), video and audio what ``configs/{video,audio}_mdpo.yaml`` shipped before the trap-prior defaults
(docs/methods.md, "Trap-prior tasks"). One ``python -m anyalign fit``
per run, one after another, each printed with its command and its last held-out accuracy. ``mdpo_config``:
``configs/{modality}_mdpo.yaml`` as shipped (its terms and negatives; the other flags as for the rest).
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_trap_data import MODALITIES, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = re.compile(r"held-out reward accuracy: ([0-9.]+)")
MDPO_LOSSES = [{"name": "sigmoid", "weight": 1.0, "beta": 0.1}, {"name": "conditional", "weight": 1.0, "beta": 0.1},
               {"name": "anchor", "weight": 1.0, "beta": 0.1}]
NEGATIVES = {"image": [{"op": "crop_keep"}],
             "video": [{"op": "swap", "p": 0.8}, {"op": "static", "p": 0.2}],
             "audio": [{"op": "swap", "p": 0.7}, {"op": "noise", "p": 0.3, "snr_db": -5.0}]}


def run(modality: str, method: str, seed: int, shards: dict, out: Path, steps: int, negatives: list | None,
        extra: list[str], tag: str = "", anchor: bool = True, losses: list | None = None) -> tuple[str, float | None]:
    root = out / "runs" / f"{modality}_{method}{tag}_s{seed}"
    config = f"configs/{modality}_{'mdpo' if method == 'mdpo_config' else 'dpo'}.yaml"
    cmd = [sys.executable, "-m", "anyalign", "fit", "--config", config,
           "--data.train_shards", shards["train_shards"], "--data.val_shards", shards["val_shards"],
           "--data.num_workers", "1", "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed),
           "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
           "--trainer.default_root_dir", str(root)]
    if method == "mdpo":
        losses = losses or (MDPO_LOSSES if anchor else [x for x in MDPO_LOSSES if x["name"] != "anchor"])
        cmd += ["--model.losses", json.dumps(losses),
                "--model.negatives", json.dumps({modality: negatives or NEGATIVES[modality]})]
    cmd += extra
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "fit.log").write_text(proc.stdout + proc.stderr)
    for ckpt in root.rglob("checkpoints"):
        shutil.rmtree(ckpt, ignore_errors=True)
    found = ACCURACY.findall(proc.stdout + proc.stderr)
    return "python " + shlex.join(cmd[1:]), float(found[-1]) if proc.returncode == 0 and found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    ap.add_argument("--methods", nargs="+", default=["dpo", "mdpo"], choices=["dpo", "mdpo", "mdpo_config"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--negatives", default=None, help="JSON list of operators for mdpo, e.g. '[{\"op\": \"null\"}]'")
    ap.add_argument("--no_anchor", action="store_true", help="mdpo without the anchor term")
    ap.add_argument("--losses", default=None, help="JSON list of loss terms for mdpo (replaces the terms above), e.g. "
                    "'[{\"name\": \"sigmoid\"}, {\"name\": \"conditional_rejected\"}]'")
    ap.add_argument("--tag", default="", help="suffix of the run directories")
    ap.add_argument("--share", type=float, default=0.8, help="share of training pairs choosing the majority class")
    ap.add_argument("--extra", default="", help="more fit flags for every run")
    args = ap.parse_args()
    negatives = json.loads(args.negatives) if args.negatives else None
    for modality in args.modalities:
        shards = build(modality, args.out / "data" / modality, share=args.share)
        for method in args.methods:
            for seed in args.seeds:
                cmd, acc = run(modality, method, seed, shards, args.out, args.steps, negatives,
                               shlex.split(args.extra), args.tag, not args.no_anchor,
                               json.loads(args.losses) if args.losses else None)
                print(f"{modality} {method}{args.tag} seed {seed}: held-out accuracy {acc}\n  {cmd}", flush=True)


if __name__ == "__main__":
    main()
