"""Checkpoints are safetensors files (no pickle) that round-trip Lightning's checkpoint dict exactly."""
import pickle
from pathlib import Path

import pytest
import torch

from anyalign.checkpoint import load_checkpoint, save_checkpoint


def test_roundtrip_nested_state(tmp_path):
    w = torch.randn(4, 3)
    ckpt = {"state_dict": {"a.weight": w, "tied": w, "b": torch.arange(5)},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                                  "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]}],
            "loops": {"fit_loop": {"epoch_progress": {"current": {"ready": 1, "completed": 0}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "kth_value": torch.tensor(float("inf"))}},
            "hyper_parameters": {"losses": [{"name": "sigmoid", "beta": 0.1}], "lora": None, "flag": True},
            "epoch": 2, "global_step": 17}
    path = tmp_path / "last.ckpt"
    save_checkpoint(ckpt, path)
    with pytest.raises(Exception):
        pickle.loads(path.read_bytes())  # not a pickle
    out = load_checkpoint(path)
    assert out["epoch"] == 2 and out["global_step"] == 17
    assert torch.equal(out["state_dict"]["a.weight"], w) and torch.equal(out["state_dict"]["tied"], w)
    state = out["optimizer_states"][0]["state"]
    assert list(state) == [0] and torch.equal(state[0]["exp_avg"], torch.ones(2))  # int keys stay ints
    assert out["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples
    assert out["hyper_parameters"] == ckpt["hyper_parameters"]
    assert out["loops"] == ckpt["loops"]
    assert torch.isinf(next(iter(out["callbacks"].values()))["kth_value"])


def test_refuses_a_pickle_checkpoint(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"old\.ckpt is not an anyalign safetensors checkpoint .*pickle"):
        load_checkpoint(path)


def test_load_from_checkpoint_reads_a_training_checkpoint(tmp_path, monkeypatch, tiny_vit):
    """``AlignModule.load_from_checkpoint`` (Lightning's API) reads our safetensors checkpoints; without the
    adapters the checkpoint was trained with it says which are missing."""
    from anyalign.__main__ import main
    from anyalign.module import AlignModule
    from modalities import ImageAdapter
    from conftest import ROOT
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "3", "--trainer.num_sanity_val_steps", "0",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
          "--trainer.default_root_dir", str(tmp_path), "--model.export_dir", "null", "--model.lr", "0.01"])
    path = tmp_path / "checkpoints" / "last.ckpt"
    stored = load_checkpoint(path)["state_dict"]
    module = AlignModule.load_from_checkpoint(path, adapters={"image": ImageAdapter(encoder=tiny_vit)})
    assert module.hparams.lr == 0.01
    state = module.state_dict()
    assert set(state) == set(stored)
    for k, v in stored.items():
        assert torch.equal(state[k], v), k
    with pytest.raises(ValueError, match=r"trained with adapters \['image'\], the module has \[\]: pass adapters="):
        AlignModule.load_from_checkpoint(path)


def test_bco_running_mean_is_module_state(tiny_vit):
    """BCO's δ lives in the module's buffers: the state dict a checkpoint stores holds it, and loading that
    state restores it (so a resumed run continues the same running mean)."""
    from anyalign.module import AlignModule
    from modalities import ImageAdapter
    module = AlignModule(adapters={"image": ImageAdapter(encoder=tiny_vit)},
                         losses=[{"name": "sigmoid"}, {"name": "bco_pair"}], reward_term="sigmoid")
    module.term_state["1"].update(torch.tensor([0.5]))
    state = module.state_dict()
    assert float(state["term_state.1.mean"]) == 0.5 and int(state["term_state.1.count"]) == 1
    fresh = AlignModule(adapters={"image": ImageAdapter(encoder=tiny_vit)},
                        losses=[{"name": "sigmoid"}, {"name": "bco_pair"}], reward_term="sigmoid")
    fresh.load_state_dict(state)
    assert float(fresh.term_state["1"].mean) == 0.5


def test_last_is_the_newest_last_checkpoint_of_the_run(tmp_path):
    """A second run of a config writes last-v1.ckpt beside last.ckpt: ``last`` must mean the newest one."""
    import os

    from anyalign.checkpoint import resolve_checkpoint
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for i, name in enumerate(["last-v1.ckpt", "last.ckpt", "epoch=1-step=9.ckpt"]):
        (ckpts / name).write_bytes(b"x")
        os.utime(ckpts / name, (1000 + i, 1000 + i))
    os.utime(ckpts / "last-v1.ckpt", (2000, 2000))  # the second run's, written last
    assert resolve_checkpoint("last", tmp_path).name == "last-v1.ckpt"
    assert resolve_checkpoint("other.ckpt", tmp_path) == Path("other.ckpt")
    with pytest.raises(FileNotFoundError, match="has this config been trained"):
        resolve_checkpoint("last", tmp_path / "nowhere")
