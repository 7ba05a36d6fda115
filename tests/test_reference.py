"""Reference strategies: LoRA with adapters disabled equals the base model; the frozen copy stays put."""
import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.model import MultimodalLM, StepCache
from anyalign.reference import build_reference
from modalities import ImageAdapter

from test_model import _examples


def _model(tiny_lm, tiny_vit, lora=None):
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit)}, lora=lora)


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


def _batch(model):
    return Collator("shared", model.tokenizer.pad_token_id, dict(model.adapters.items()))(_examples(model))


def test_lora_reference_equals_base_model_logps(tiny_lm, tiny_vit):
    base = _model(tiny_lm, tiny_vit).eval()
    policy = _model(tiny_lm, tiny_vit, lora={"r": 4, "lora_alpha": 8})
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(n.startswith("adapters.") for n in trainable)
    assert not any("lora_" not in n and n.startswith("lm.") for n in trainable)  # LM base weights frozen
    reference = build_reference("adapter_disabled", policy)
    _perturb(policy)  # as after training steps: LoRA and projector moved
    batch = _batch(base)
    expected = base(batch).logps
    torch.testing.assert_close(reference(batch).logps, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy.eval()(batch).logps, expected, atol=1e-3)  # the policy itself moved
    assert policy.adapters["image"].projector[0].weight.requires_grad  # reference left the policy trainable


def test_frozen_copy_keeps_initial_logps(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit).eval()
    batch = _batch(policy)
    before = policy(batch).logps.detach()
    reference = build_reference("frozen_copy", policy)
    _perturb(policy)
    torch.testing.assert_close(reference(batch).logps, before)
    assert not any(p.requires_grad for p in reference.model.parameters())


def test_adapter_disabled_needs_lora(tiny_lm, tiny_vit):
    with pytest.raises(ValueError, match="model.lora"):
        build_reference("adapter_disabled", _model(tiny_lm, tiny_vit))


def test_lora_export_is_merged_and_reloads_same_logps(tiny_lm, tiny_vit, tmp_path):
    from anyalign.export import load_aligned, save_aligned
    policy = _model(tiny_lm, tiny_vit, lora={"r": 4, "lora_alpha": 8})
    _perturb(policy)
    batch = _batch(policy)
    before = policy.eval()(batch).logps.detach()
    save_aligned(policy, tmp_path / "export")
    reloaded = load_aligned(tmp_path / "export")
    assert not hasattr(reloaded.lm, "disable_adapter")  # a plain HF model, LoRA merged
    torch.testing.assert_close(reloaded(batch).logps, before, atol=1e-4, rtol=1e-5)


def _count_encoder_calls(*models):
    calls = []
    for m in models:
        for adapter in m.adapters.values():
            adapter.tower.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("strategy, lora", [("frozen_copy", None), ("adapter_disabled", {"r": 4})])
def test_frozen_encoder_runs_once_per_batch(tiny_lm, tiny_vit, strategy, lora):
    """The policy's frozen-encoder features are reused by the reference forward on the same batch, which
    gives the same log-probs as a reference forward computing its own."""
    policy = _model(tiny_lm, tiny_vit, lora=lora)
    reference = build_reference(strategy, policy)
    _perturb(policy)  # the projector moved: the reference must still project with its initial one
    alone = reference(_batch(policy)).logps  # a fresh batch: the reference encodes for itself
    batch = _batch(policy)
    models = [policy] + ([reference.model] if strategy == "frozen_copy" else [])
    calls = _count_encoder_calls(*models)
    cache = StepCache()
    policy(batch, cache)
    shared = reference(batch, cache).logps
    assert len(calls) == 1
    torch.testing.assert_close(shared, alone, atol=0, rtol=0)


def test_trainable_encoder_is_not_shared(tiny_lm, tiny_vit):
    torch.manual_seed(0)
    policy = MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit, freeze_encoder=False)})
    reference = build_reference("frozen_copy", policy)
    _perturb(policy)  # the policy's encoder moved too: its features are not the reference's
    alone = reference(_batch(policy)).logps
    batch = _batch(policy)
    calls = _count_encoder_calls(policy, reference.model)
    cache = StepCache()
    policy(batch, cache)
    torch.testing.assert_close(reference(batch, cache).logps, alone, atol=0, rtol=0)
    assert len(calls) == 2


def test_frozen_copy_shares_the_policys_frozen_encoder(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit)
    reference = build_reference("frozen_copy", policy)
    before = reference(_batch(policy)).logps
    assert reference.share_frozen_encoders(policy) == ["image"]
    ref_adapter, adapter = reference.model.adapters["image"], policy.adapters["image"]
    assert ref_adapter.tower is adapter.tower and ref_adapter.projector is not adapter.projector
    _perturb(policy)  # the policy's projector (and LM) move; the shared tower is frozen and does not
    torch.testing.assert_close(reference(_batch(policy)).logps, before, atol=0, rtol=0)


def test_fit_shares_the_encoder_on_one_device(tmp_path, monkeypatch):
    """on_fit_start shares the frozen towers (single device / DDP) and resolves attn_implementation=auto."""
    import lightning as L

    from anyalign.__main__ import main
    from conftest import ROOT
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["shared"] = pl_module.reference.model.adapters["image"].tower is pl_module.policy.adapters["image"].tower
            seen["attn"] = (pl_module.hparams.attn_implementation, pl_module.policy.attn_implementation,
                            pl_module.reference.model.attn_implementation)

    monkeypatch.setattr("anyalign.module.AlignModule.configure_callbacks", lambda self: [Probe()])
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
          "--trainer.default_root_dir", str(tmp_path)])
    assert seen == {"shared": True, "attn": ("auto", "sdpa", "sdpa")}  # the default resolves to SDPA on CPU
