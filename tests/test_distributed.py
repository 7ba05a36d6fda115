"""Distributed training on CPU: DDP with two gloo processes through the real CLI, the strategy fragments
in configs/strategies/, and the single-process memory/precision options.

DDP runs are launched as ``python -m anyalign fit ...`` in a subprocess; Lightning's subprocess-script
launcher then starts rank 1 by re-running the same ``python -m anyalign`` command line. A test-only
callback (``RankProbe``, imported by the ranks from this file through PYTHONPATH) writes, per rank, the
sample keys it trained on, its batch count and a hash of the policy's trainable weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
IMAGE_SHARDS = sorted((ROOT / "assets/data/image").glob("train-*.tar"))


class RankProbe(Callback):
    """Per rank: the keys of every training batch (with its epoch) and validation batch, and sha256 hashes
    of the policy's trainable parameters and of the reference model after training, written to
    ``{out_dir}/rank-{global_rank}.json``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.train: list[dict] = []
        self.val: list[list[str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.train.append({"epoch": trainer.current_epoch, "keys": list(batch["keys"]),
                           "loss": None if loss is None else float(loss)})

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val.append(list(batch["keys"]))

    def on_train_end(self, trainer, pl_module) -> None:
        policy = hashlib.sha256()
        for name, p in sorted(pl_module.policy.named_parameters()):
            if p.requires_grad:
                policy.update(name.encode())
                policy.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        reference = None
        if pl_module.reference.name == "frozen_copy":
            h = hashlib.sha256()
            for name, t in sorted(pl_module.reference.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            reference = h.hexdigest()
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank-{trainer.global_rank}.json").write_text(json.dumps({
            "rank": trainer.global_rank, "world": trainer.world_size, "num_nodes": trainer.num_nodes,
            "strategy": type(trainer.strategy).__name__,
            "cluster": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "train": self.train, "val": self.val, "global_step": trainer.global_step,
            "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) is True
                                          for m in pl_module.policy.lm.modules()),
            "precision": str(trainer.precision), "policy_sha": policy.hexdigest(), "reference_sha": reference}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_keys(urls) -> list[str]:
    keys = []
    for u in urls:
        with tarfile.open(u) as tar:
            keys += [m.name[:-len(".json")] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    """A few steps on the embedded default, no validation, and the probe writing to ``tmp_path/probe``."""
    return ["--trainer.accelerator", "cpu", "--trainer.num_sanity_val_steps", "0",
            "--trainer.limit_val_batches", "0", "--data.val_shards", "null",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--model.export_dir", "null",
            "--data.num_workers", "1", *extra,
            "--trainer.callbacks+=test_distributed.RankProbe", f"--trainer.callbacks.out_dir={tmp_path / 'probe'}"]


def launch(cmd: list[str], tmp_path: Path, env: dict | None = None, timeout: int = 300):
    """Run ``cmd`` from the repository root under a timeout; return the ranks' probe records."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", **(env or {})}
    # own session, so that on a hang every rank (Lightning's or srun's children included) is killed
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"fit hung for {timeout} s (ranks waiting on each other?)\n{err[-4000:]}")
    assert proc.returncode == 0, f"fit failed (rc {proc.returncode}):\n{out[-3000:]}\n{err[-6000:]}"
    ranks = sorted((tmp_path / "probe").glob("rank-*.json"))
    return [json.loads(p.read_text()) for p in ranks], subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def cli(tmp_path: Path, *extra: str, timeout: int = 300):
    """``python -m anyalign fit --config configs/image_dpo.yaml ...`` in a subprocess."""
    cmd = [sys.executable, "-m", "anyalign", "fit", "--config", "configs/image_dpo.yaml", *overrides(tmp_path, *extra)]
    return launch(cmd, tmp_path, timeout=timeout)


def keys_of(rank: dict, epoch: int | None = None) -> list[str]:
    return [k for b in rank["train"] if epoch is None or b["epoch"] == epoch for k in b["keys"]]


# ---- the strategy fragments ----

@pytest.mark.parametrize("fragment", ["ddp", "fsdp", "deepspeed"])
def test_strategy_fragment_merges_over_a_full_config(fragment, monkeypatch, capsys):
    """``--config full.yaml --config strategies/X.yaml``: the fragment's trainer keys win, everything else
    (model, data, the rest of trainer) comes from the full config. Parsing only: nothing is instantiated,
    so this holds without deepspeed installed and without GPUs."""
    import yaml

    from anyalign.__main__ import main
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/video_dpo.yaml", "--config", f"configs/strategies/{fragment}.yaml",
              "--trainer.num_nodes", "2", "--print_config"])
    assert exit_.value.code in (0, None)
    merged = yaml.safe_load(capsys.readouterr().out)
    base = yaml.safe_load((ROOT / "configs/video_dpo.yaml").read_text())
    frag = yaml.safe_load((ROOT / f"configs/strategies/{fragment}.yaml").read_text())
    assert set(frag) == {"trainer"}, "a strategy fragment sets trainer keys only"
    trainer = merged["trainer"]
    want = frag["trainer"]["strategy"]
    if isinstance(want, str):
        assert trainer["strategy"] == want
    else:
        assert trainer["strategy"]["class_path"] == want["class_path"]
        for k, v in want["init_args"].items():
            assert trainer["strategy"]["init_args"][k] == v
    assert trainer["num_nodes"] == 2  # the command line wins over both files
    shared = yaml.safe_load((ROOT / "configs/base/trainer.yaml").read_text())["trainer"]  # video_dpo includes it
    assert trainer["max_steps"] == shared["max_steps"]
    assert merged["model"]["lm"] == base["model"]["lm"]
    assert merged["data"]["train_shards"] == base["data"]["train_shards"]


def test_deepspeed_strategy_resolves():
    """The fragment's class resolves; building it needs the deepspeed package (and fit needs CUDA)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry
    assert "deepspeed_stage_2" in StrategyRegistry
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
        with pytest.raises(MisconfigurationException, match="must have DeepSpeed installed"):
            DeepSpeedStrategy(stage=2)
    else:
        assert DeepSpeedStrategy(stage=2).config["zero_optimization"]["stage"] == 2


def test_fewer_shards_than_ranks_split_by_sample(tmp_path, monkeypatch):
    """One shard, two ranks: each rank reads it and keeps every other sample (no rank is left without
    data, none sees the other's samples); with enough shards, whole shards per rank."""
    from anyalign.data import pipeline
    from conftest import pair, write_shard
    url = write_shard(tmp_path / "one.tar", [pair(f"k{i}") for i in range(5)])

    def keys(urls, rank, world, workers=1):
        monkeypatch.setattr(pipeline, "rank_and_world", lambda: (rank, world))
        stream = pipeline.PreferenceStream(urls, lambda src: (s["__key__"] for s in src), True, 1, 0)
        return list(stream)
    assert keys([url], 0, 2) == ["k0", "k2", "k4"] and keys([url], 1, 2) == ["k1", "k3"]
    assert keys([url], 0, 1) == [f"k{i}" for i in range(5)]
    two = [url, write_shard(tmp_path / "two.tar", [pair(f"j{i}") for i in range(2)])]
    assert sorted(keys(two, 0, 2) + keys(two, 1, 2)) == sorted([f"k{i}" for i in range(5)] + ["j0", "j1"])
    assert {len(keys(two, r, 2)) for r in (0, 1)} == {5, 2}


# ---- DDP: two gloo processes on CPU, launched by Lightning itself ----

# the shipped fragment, on CPU: gloo
DDP = ("--config", "configs/strategies/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
       "--data.batch_size", "32")


def test_ddp_disjoint_shards_equal_batches_identical_weights(tmp_path):
    """4 shards x 64 samples on 2 ranks, 32 per batch: one epoch is 4 batches per rank. Each rank trains on
    its own 2 shards; together exactly the samples one process sees in an epoch, each once."""
    ranks, proc = cli(tmp_path, *DDP, "--trainer.max_steps", "4", "--model.export_dir", "export")  # the default export
    assert [r["rank"] for r in ranks] == [0, 1]
    # the export is written once, by rank 0, and the run exits 0 (launch checks): no collective called by one rank
    exports = list((tmp_path / "run").glob("lightning_logs/version_*/export/anyalign.json"))
    assert len(exports) == 1, proc.stdout[-2000:]
    from anyalign.export import load_aligned
    load_aligned(exports[0].parent)
    # both ranks took one run directory: its logs, its checkpoint and its export, and no second version_N
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    assert [p.name for p in (tmp_path / "run" / "lightning_logs").iterdir()] == ["version_0"]
    assert exports[0].parent == run / "export" and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file() and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert all(r["world"] == 2 and r["strategy"] == "DDPStrategy" for r in ranks)
    assert all(r["cluster"] == "LightningEnvironment" for r in ranks)  # rank 1 started by Lightning
    assert [len(r["train"]) for r in ranks] == [4, 4]
    assert [r["global_step"] for r in ranks] == [4, 4]
    k0, k1 = (keys_of(r) for r in ranks)
    assert len(k0) == len(set(k0)) == 128 and len(k1) == len(set(k1)) == 128
    assert not set(k0) & set(k1), "ranks trained on the same samples"
    assert set(k0) | set(k1) == set(shard_keys(IMAGE_SHARDS)) and len(k0) + len(k1) == 256
    # whole shards per rank (split by rank before reading), not interleaved samples
    by_shard = {k: u.name for u in IMAGE_SHARDS for k in shard_keys([u])}
    assert len({by_shard[k] for k in k0}) == 2 and len({by_shard[k] for k in k1}) == 2
    assert ranks[0]["policy_sha"] == ranks[1]["policy_sha"], "policies diverged across ranks"
    assert ranks[0]["reference_sha"] == ranks[1]["reference_sha"], "reference models differ across ranks"


def test_ddp_uneven_shards_do_not_hang(tmp_path):
    """3 shards on 2 ranks split 2/1: both ranks still run 3 batches per epoch (the short rank re-reads its
    shard), over two epochs whose shard split changes with the epoch and stays disjoint; the one
    validation shard (fewer shards than ranks) is split by sample."""
    from anyalign.data.pipeline import PreferenceStream
    urls = IMAGE_SHARDS[:3]
    val = ROOT / "assets/data/image/val-000.tar"
    ranks, proc = cli(tmp_path, *DDP, "--trainer.max_steps", "6",
                         "--data.train_shards", "assets/data/image/train-{000..002}.tar",
                         "--data.val_shards", str(val.relative_to(ROOT)), "--trainer.limit_val_batches", "1.0",
                         "--trainer.val_check_interval", "3")
    assert [len(r["train"]) for r in ranks] == [6, 6]
    assert [r["global_step"] for r in ranks] == [6, 6]
    by_shard = {k: str(u.relative_to(ROOT)) for u in urls for k in shard_keys([u])}
    stream = PreferenceStream([str(u.relative_to(ROOT)) for u in urls], None, True, 1, 0)
    for epoch in (0, 1):
        assert [sum(b["epoch"] == epoch for b in r["train"]) for r in ranks] == [3, 3]
        read = [{by_shard[k] for k in keys_of(r, epoch)} for r in ranks]
        assert not read[0] & read[1], f"epoch {epoch}: ranks read the same shard"
        stream.set_epoch(epoch)
        assert [sorted(s) for s in read] == [sorted(stream.shards(r, 2, 0, 1)) for r in (0, 1)], \
            f"epoch {epoch}: not this epoch's shard split (epoch not reaching the stream?)"
    assert ranks[0]["policy_sha"] == ranks[1]["policy_sha"]
    # validation after epochs 0 and 1: one batch per rank each time, disjoint halves of the val shard
    assert [len(r["val"]) for r in ranks] == [2, 2]
    v0, v1 = set(ranks[0]["val"][0]), set(ranks[1]["val"][0])
    assert not v0 & v1 and v0 | v1 == set(shard_keys([val]))
    assert "held-out reward accuracy" in proc.stdout and "on 64 pairs" in proc.stdout, proc.stdout[-2000:]


FAKE_SRUN = """#!/bin/bash
# what srun does for this test: SLURM_NTASKS copies of the command, each with its SLURM rank variables
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) SLURM_NODEID=$((i / SLURM_NTASKS_PER_NODE)) "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def test_slurm_script_two_nodes(tmp_path):
    """examples/slurm_multinode.sh as sbatch would run it on 2 nodes x 1 task, with a stand-in ``srun``
    that starts both tasks on this machine: Lightning takes ranks from SLURM (not its own launcher),
    trainer.num_nodes=2, trainer.devices=1, the DDP fragment, CPU instead of GPU via a trailing override."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text(FAKE_SRUN)
    (bin_ / "srun").chmod(0o755)
    env = {"PATH": os.pathsep.join([str(bin_), str(Path(sys.executable).parent), os.environ["PATH"]]),
           "VENV": str(tmp_path / "no-venv"), "CONFIG": "configs/image_dpo.yaml",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "anyalign",
           "SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "127.0.0.1"}
    ranks, _ = launch(["bash", "examples/slurm_multinode.sh",
                          *overrides(tmp_path, "--data.batch_size", "16", "--data.num_workers", "0",
                                     "--trainer.max_steps", "2")], tmp_path, env)
    assert [(r["rank"], r["world"], r["strategy"]) for r in ranks] == [(0, 2, "DDPStrategy"), (1, 2, "DDPStrategy")]
    assert [len(r["train"]) for r in ranks] == [2, 2]
    assert not set(keys_of(ranks[0])) & set(keys_of(ranks[1]))
    assert ranks[0]["policy_sha"] == ranks[1]["policy_sha"]
    assert [(r["cluster"], r["num_nodes"]) for r in ranks] == [("SLURMEnvironment", 2)] * 2


def test_fsdp_on_cpu(tmp_path, monkeypatch):
    """FSDP with two CPU processes. Lightning 2.6 refuses FSDP on any accelerator but CUDA before
    launching anything; if a later version accepts it, the run below must work."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import Strategy
    frag = yaml.safe_load((ROOT / "configs/strategies/fsdp.yaml").read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": frag})).strategy
    try:
        Trainer(strategy=strategy, accelerator="cpu", devices=2, logger=False, enable_checkpointing=False)
    except ValueError as e:
        pytest.skip(f"Lightning refuses FSDP on CPU: {e}")
    ranks, _ = cli(tmp_path, "--config", "configs/strategies/fsdp.yaml", "--trainer.accelerator", "cpu",
                      "--trainer.devices", "2", "--data.batch_size", "32", "--trainer.max_steps", "2")
    assert [len(r["train"]) for r in ranks] == [2, 2]


# ---- single process: memory and precision options ----

@pytest.mark.parametrize("option,value,batches", [
    ("model.gradient_checkpointing", "true", 2),
    ("trainer.precision", "bf16-mixed", 2),
    ("trainer.accumulate_grad_batches", "2", 4),
])
def test_single_process_option_trains(option, value, batches, tmp_path, monkeypatch):
    from anyalign.__main__ import main
    monkeypatch.chdir(ROOT)
    probe = tmp_path / "probe"
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.accelerator", "cpu",
          "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
          "--data.val_shards", "null", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
          "--model.export_dir", "null", "--data.num_workers", "0", "--data.batch_size", "4",
          f"--{option}", value,
          "--trainer.callbacks+=test_distributed.RankProbe", f"--trainer.callbacks.out_dir={probe}"])
    (rank,) = [json.loads(p.read_text()) for p in probe.glob("rank-*.json")]
    assert rank["global_step"] == 2 and len(rank["train"]) == batches
    assert all(b["loss"] is not None and torch.isfinite(torch.tensor(b["loss"])) for b in rank["train"])
    if option == "model.gradient_checkpointing":
        assert rank["gradient_checkpointing"]
    if option == "trainer.precision":
        assert rank["precision"] == "bf16-mixed"


def test_ddp_online_each_rank_samples_its_own_prompts(tmp_path):
    """Online DPO under DDP: each rank samples and scores its own prompts; a rank whose prompts all tie (nothing
    to train) still joins the gradient all-reduce with a zero loss, so no rank waits forever and the weights stay
    identical across ranks."""
    cmd = [sys.executable, "-m", "anyalign", "fit", "--config", "configs/image_mixed_dpo.yaml",
           *overrides(tmp_path, *DDP[:-2], "--data.batch_size", "4", "--trainer.max_steps", "3",
                      "--data.online_fraction", "1.0", "--model.online",
                      '{"samples": 2, "max_new_tokens": 6, "reward": {"class_path": "online_rewards.TiesOnRankOne"}}')]
    ranks, _ = launch(cmd, tmp_path, timeout=240)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["global_step"] == 3 for r in ranks)
    assert not set(keys_of(ranks[0])) & set(keys_of(ranks[1]))
    assert ranks[0]["policy_sha"] == ranks[1]["policy_sha"]
    assert [b["loss"] for b in ranks[1]["train"]] == [0.0] * 3  # nothing to train: the zero loss
    assert all(b["loss"] not in (None, 0.0) for b in ranks[0]["train"])
