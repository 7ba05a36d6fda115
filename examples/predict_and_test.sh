#!/usr/bin/env bash
# After fit: answers from the aligned model (JSONL), and the held-out metrics on test shards. Run from the
# repository root; the demo's held-out shard stands in for a test set here.
set -euo pipefail
python -m anyalign fit --config configs/video_dpo.yaml --trainer.default_root_dir runs/video_dpo_predict_demo
export=$(ls -d runs/video_dpo_predict_demo/lightning_logs/version_*/export | sort -V | tail -n 1)

# shards in, one JSON line per prompt out: {"key", "prompt", "response", "tokens", "seconds"}
python -m anyalign predict --model "$export" --input assets/data/video/val-000.tar --output runs/video_dpo_predict_demo/answers.jsonl \
    --max-new-tokens 24
# sampling instead of greedy; the same seed gives the same answers
python -m anyalign predict --model "$export" --input assets/data/video/val-000.tar --output runs/video_dpo_predict_demo/sampled.jsonl \
    --max-new-tokens 24 --temperature 0.8 --top-p 0.9 --seed 1
head -n 3 runs/video_dpo_predict_demo/answers.jsonl

# the held-out metrics of validate, on test shards, with the run's last checkpoint
python -m anyalign test --config configs/video_dpo.yaml --trainer.default_root_dir runs/video_dpo_predict_demo \
    --ckpt_path last --data.test_shards assets/data/video/val-000.tar
