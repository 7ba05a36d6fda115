"""TR-DPO: ``model.reference_sync`` moves the frozen copy towards the policy every N optimizer steps
(θ_ref ← α·θ + (1 - α)·θ_ref), only where a copy exists, and a checkpoint keeps the moved reference."""
import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import ROOT
from test_model import _examples

from anyalign.checkpoint import load_checkpoint
from anyalign.data.collate import Collator
from anyalign.model import MultimodalLM
from anyalign.reference import FrozenCopy, SyncReference, build_reference
from modalities import ImageAdapter


def _model(tiny_lm, tiny_vit, lora=None):
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit)}, lora=lora)


def _perturb(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def _trained(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_mix_moves_the_trained_weights_and_alpha_one_copies(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit)
    reference = build_reference("frozen_copy", policy, sync={"every": 4, "alpha": 0.25})
    reference.setup(policy, torch.device("cpu"), share_frozen=True)
    own = dict(reference.model.named_parameters(remove_duplicate=False))
    before = {n: own[n].detach().clone() for n in _trained(policy)}  # the copy itself trains nothing
    assert before and not any(p.requires_grad for p in reference.model.parameters())
    moved = {own[n].data_ptr() for n in before}  # a tied weight (lm_head = embeddings) moves with its twin
    frozen = {n: p.detach().clone() for n, p in own.items() if p.data_ptr() not in moved}
    assert frozen  # the tower's weights, shared with the policy
    _perturb(policy)
    after_policy = _trained(policy)
    reference.mix_from(policy, 0.25)
    for n, p0 in before.items():
        torch.testing.assert_close(own[n], 0.75 * p0 + 0.25 * after_policy[n])
        assert not own[n].requires_grad
    for n, p in frozen.items():
        assert torch.equal(own[n], p)
    reference.mix_from(policy, 1.0)  # a hard copy: the reference is the policy now
    batch = Collator("shared", policy.tokenizer.pad_token_id, dict(policy.adapters.items()))(_examples(policy))
    torch.testing.assert_close(reference(batch).logps, policy.eval()(batch).logps)


def test_callback_updates_once_per_nth_optimizer_step_and_round_trips(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit)
    reference = build_reference("frozen_copy", policy, sync={"every": 2, "alpha": 0.5})
    [callback] = reference.callbacks()
    assert isinstance(callback, SyncReference) and (callback.every, callback.alpha) == (2, 0.5)
    calls = []
    reference.mix_from = lambda p, a: calls.append(a)
    module = SimpleNamespace(policy=policy)
    callback.on_fit_start(None, module)
    for step in [0, 1, 1, 2, 2, 2, 3, 4, 4, 5]:  # micro-batches of gradient accumulation share a step
        callback.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, 0)
    assert calls == [0.5, 0.5] and callback.synced_at == 4
    del reference.mix_from
    reference.mix_from(policy, 0.5)
    state = callback.state_dict()
    assert state["synced_at"] == 4 and set(state["weights"]) == set(_trained(policy))
    fresh = build_reference("frozen_copy", _model(tiny_lm, tiny_vit), sync={"every": 2, "alpha": 0.5})
    [restored] = fresh.callbacks()
    restored.load_state_dict(state)
    assert restored.synced_at == 4
    own = dict(fresh.model.named_parameters())
    for n, v in state["weights"].items():
        assert torch.equal(own[n], v)
    assert SyncReference(reference, 2, 0.5).state_dict() == {"synced_at": 0}  # nothing moved yet: nothing stored


def test_no_callback_without_sync(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit)
    assert build_reference("frozen_copy", policy).callbacks() == []
    assert build_reference("none", policy).callbacks() == []


def test_mix_refuses_sharded_policies(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit)
    reference = FrozenCopy(policy, sync={"every": 1, "alpha": 1.0})
    reference.setup(policy, torch.device("cpu"), share_frozen=False)  # what FSDP / DeepSpeed set up
    with pytest.raises(RuntimeError, match="single device or DDP"):
        reference.mix_from(policy, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"losses": [{"name": "sigmoid"}], "lora": {"r": 4}}, r"model.reference is adapter_disabled.*frozen_copy"),
    ({"losses": [{"name": "simpo"}]}, r"model.reference is none: no loss term needs a reference model"),
    ({"losses": [{"name": "sigmoid", "reference_free": True}]}, r"no loss term needs a reference model"),
    ({"losses": [{"name": "sigmoid"}], "reference_sync": {"every": 0, "alpha": 0.5}}, r"every must be an integer >= 1"),
    ({"losses": [{"name": "sigmoid"}], "reference_sync": {"every": 8, "alpha": 0.0}}, r"alpha must be in \(0, 1\]"),
    ({"losses": [{"name": "sigmoid"}], "reference_sync": {"every": 8}}, r"must be \{every: N, alpha: α\}"),
    ({"losses": [{"name": "sigmoid"}], "reference_sync": {"steps": 8, "alpha": 0.5}}, r"must be \{every: N"),
])
def test_bad_reference_sync_fails_at_start_up(tiny_lm, kwargs, message):
    from anyalign.module import AlignModule
    kwargs.setdefault("reference_sync", {"every": 8, "alpha": 0.5})
    with pytest.raises(ValueError, match=message):
        AlignModule(lm=tiny_lm, **kwargs)


def test_precomputed_reference_cannot_sync(tiny_lm):
    policy = MultimodalLM(tiny_lm, {})
    with pytest.raises(ValueError, match="precomputed: stored log-probs cannot follow the policy"):
        build_reference("precomputed", policy, "unused", ["chosen"], sync={"every": 8, "alpha": 0.5})


class ReferenceProbe(L.Callback):
    """Writes the sum of each trained parameter of the reference when training starts (after any restore)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        own = dict(pl_module.reference.model.named_parameters(remove_duplicate=False))
        names = [n for n, p in pl_module.policy.named_parameters() if p.requires_grad]
        with open(self.path, "w") as f:
            json.dump({n: float(own[n].double().sum()) for n in names}, f)


def _fit(root, probe, steps, ckpt=None):
    from anyalign.__main__ import main
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "every_n_train_steps": 2}},
                 {"class_path": "test_trdpo.ReferenceProbe", "init_args": {"path": str(probe)}}]
    args = ["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", str(steps), "--data.batch_size", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.val_check_interval", "1000", "--trainer.limit_val_batches", "1",
            "--trainer.default_root_dir", str(root), "--data.num_workers", "0", "--model.export_dir", "null",
            "--model.lr", "1e-2", "--model.reference_sync", json.dumps({"every": 2, "alpha": 1.0}),
            "--trainer.callbacks", json.dumps(callbacks)]
    main(args + (["--ckpt_path", ckpt] if ckpt else []))


def test_fit_syncs_the_reference_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    _fit(tmp_path, tmp_path / "start.json", 2)  # hard sync after step 2, then the step-2 checkpoint
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    state = ckpt["callbacks"]["SyncReference"]
    assert ckpt["global_step"] == 2 and state["synced_at"] == 2
    initial = json.loads((tmp_path / "start.json").read_text())
    assert set(state["weights"]) == set(initial)
    moved = 0
    for n, w in state["weights"].items():  # α = 1: the reference is the policy of step 2
        assert torch.equal(w, ckpt["state_dict"]["policy." + n]), n
        moved += abs(float(w.double().sum()) - initial[n]) > 1e-6
    assert moved  # training changed the policy, so the reference moved
    _fit(tmp_path, tmp_path / "resumed.json", 3, ckpt="last")
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    for n, w in state["weights"].items():  # restored before training went on, not the initial policy
        assert resumed[n] == pytest.approx(float(w.double().sum()), abs=1e-9), n
