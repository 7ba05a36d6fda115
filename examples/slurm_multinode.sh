#!/bin/bash
# Multi-node training under SLURM: one task (one Lightning rank) per GPU; Lightning reads its ranks,
# MASTER_ADDR (first node of SLURM_NODELIST) and MASTER_PORT (from SLURM_JOB_ID) from SLURM.
#
#   sbatch examples/slurm_multinode.sh                                  # 2 nodes x 8 GPUs, video DPO, DDP
#   sbatch --nodes=4 examples/slurm_multinode.sh --trainer.max_steps 5000
#   CONFIG=configs/image_dpo.yaml STRATEGY=configs/strategies/fsdp.yaml sbatch examples/slurm_multinode.sh
#
# Arguments after the script name go to `anyalign fit` after the ones below, so they win.
# A requeued job (sbatch --requeue) keeps its SLURM_JOB_ID: pass --ckpt_path last and it resumes the job's
# latest run in that run's own directory (runs/<config>-<job id>/lightning_logs/version_N/); the first start,
# with no checkpoint yet, starts a new run.
# Keep --ntasks-per-node equal to --gpus-per-node: Lightning refuses to start unless trainer.devices
# equals SLURM_NTASKS_PER_NODE and trainer.num_nodes equals SLURM_NNODES (this script passes both).
# Shards, assets and the run directory must be on a filesystem every node sees. Give the run at least
# nodes x GPUs x data.num_workers train shards so that every rank and worker reads whole shards of its own.
#SBATCH --job-name=anyalign
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out

set -eo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
VENV=${VENV:-.venv}                     # your environment; or `module load` / `conda activate` here
if [ -f "$VENV/bin/activate" ]; then . "$VENV/bin/activate"; fi
set -u

CONFIG=${CONFIG:-configs/video_dpo.yaml}
STRATEGY=${STRATEGY:-configs/strategies/ddp.yaml}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

srun python -m anyalign fit \
    --config "$CONFIG" --config "$STRATEGY" \
    --trainer.accelerator gpu \
    --trainer.devices "$SLURM_NTASKS_PER_NODE" \
    --trainer.num_nodes "$SLURM_NNODES" \
    --trainer.default_root_dir "runs/$(basename "$CONFIG" .yaml)-$SLURM_JOB_ID" \
    "$@"
