#!/usr/bin/env bash
# Train the video demo, then compare the initial and the aligned model on the held-out shard: one table on
# the terminal, eval/eval.json and eval/eval.png. Run from the repository root.
set -euo pipefail
python -m anyalign fit --config configs/video_dpo.yaml --trainer.default_root_dir runs/video_dpo_eval_demo
export=$(ls -d runs/video_dpo_eval_demo/lightning_logs/version_*/export | sort -V | tail -n 1)
python -m anyalign evaluate --config configs/video_dpo.yaml --models initial "$export" --out runs/video_dpo_eval_demo/eval --max-new-tokens 24
