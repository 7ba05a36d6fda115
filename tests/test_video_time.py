"""Video that knows time (``VideoAdapter(frame_deltas=..., time_embedding=...)``): the default is unchanged,
the options give each frame's tokens a mark of where the frame is in time (so a reversed clip reaches the LM
as other tokens, not the same tokens in another order), the learned frame times train, survive the
checkpoint, the export and a reload, and a frozen reference keeps its own. No ffmpeg: clips are tensors, and
the one training run reads the demo shards in ``assets/data/video``."""
import math

import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.data.template import PreferenceTokenizer
from anyalign.model import MultimodalLM, StepCache
from anyalign.reference import build_reference
from modalities import VideoAdapter
from modalities.video import sinusoid

from conftest import ROOT

OPTIONS = [{"time_embedding": "sinusoidal"}, {"time_embedding": "learned"}, {"frame_deltas": "add"},
           {"frame_deltas": "concat"}, {"frame_deltas": "concat", "time_embedding": "sinusoidal"}]


def _adapter(tiny_vit, lm_hidden=16, seed=0, **kw) -> VideoAdapter:
    torch.manual_seed(seed)
    adapter = VideoAdapter(encoder=tiny_vit, num_frames=kw.pop("num_frames", 8), spatial_pool=2, **kw)
    adapter.bind(lm_hidden)
    return adapter.eval()


def _clip(frames=8, seed=0) -> torch.Tensor:
    return torch.randn(frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _tokens(adapter, clips) -> list[torch.Tensor]:
    with torch.no_grad():
        return adapter(adapter.collate(clips))


def _learned_nonzero(adapter, seed=1):
    with torch.no_grad():  # as after training: the learned frame times start at zero
        adapter.frame_time.copy_(torch.randn(adapter.frame_time.shape, generator=torch.Generator().manual_seed(seed)))


def test_default_is_the_plain_projector_on_pooled_patches(tiny_vit):
    """Both options ``none``: no extra parameter, projector input = encoder width, and the tokens are the projector
    applied to the tower's features, frame after frame, as before the options existed."""
    adapter = _adapter(tiny_vit)
    assert (adapter.frame_deltas, adapter.time_embedding) == ("none", "none")
    assert not hasattr(adapter, "frame_time")
    assert sorted(adapter.state_dict()) == sorted(["projector.0.weight", "projector.0.bias", "projector.2.weight",
                                                    "projector.2.bias"] + [f"tower.{k}" for k in adapter.tower.state_dict()])
    assert adapter.projector[0].in_features == adapter.tower.hidden_size
    clip = _clip()
    with torch.no_grad():
        expected = adapter.projector(adapter.tower(clip).flatten(0, 1))
    (out,) = _tokens(adapter, [clip])
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("option", ["sinusoidal", "learned"])
def test_same_projector_weights_with_a_time_embedding(tiny_vit, option):
    """The option draws no random numbers: a seed gives the same projector as without it; the learned frame
    times start at zero, so the model starts exactly as without the option."""
    plain, timed = _adapter(tiny_vit), _adapter(tiny_vit, time_embedding=option)
    for a, b in zip(plain.projector.parameters(), timed.projector.parameters()):
        assert torch.equal(a, b)
    if option == "learned":
        assert torch.equal(timed.frame_time, torch.zeros(8, timed.tower.hidden_size))
        clip = _clip()
        torch.testing.assert_close(_tokens(timed, [clip])[0], _tokens(plain, [clip])[0], atol=0, rtol=0)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "+".join(o.values()))
@pytest.mark.parametrize("temporal_pool, frames", [(1, 8), (2, 8), (2, 7), (3, 5)])
def test_shapes(tiny_vit, option, temporal_pool, frames):
    adapter = _adapter(tiny_vit, temporal_pool=temporal_pool, **option)
    hidden, tokens = adapter.tower.hidden_size, adapter.tower.tokens_per_image
    wide = option.get("frame_deltas") == "concat"
    assert adapter.projector[0].in_features == hidden * (2 if wide else 1)
    if option.get("time_embedding") == "learned":
        assert adapter.frame_time.shape == (math.ceil(8 / temporal_pool), hidden)
    clips = [_clip(frames), _clip(3, seed=1)]  # clips of different lengths in one batch
    out = _tokens(adapter, clips)
    assert [o.shape for o in out] == [(adapter.num_tokens(c), 16) for c in clips]
    feats = adapter.encode(adapter.collate(clips))
    assert feats[0].shape == (math.ceil(frames / temporal_pool) * tokens, hidden * (2 if wide else 1))


def test_sinusoid_values():
    s = sinusoid(5, 6)
    assert s.shape == (5, 6)
    for pos in range(5):
        for i in range(3):
            w = 10000.0 ** (-2 * i / 6)
            assert s[pos, 2 * i].item() == pytest.approx(math.sin(pos * w), abs=1e-6)
            assert s[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos * w), abs=1e-6)
    assert torch.equal(s[0], torch.tensor([0.0, 1.0] * 3))
    odd = sinusoid(4, 5)  # an odd width: the last dimension is a sine
    assert odd.shape == (4, 5) and odd[:, 4].tolist() == pytest.approx([math.sin(p * 1e-4 ** 0.8) for p in range(4)])
    assert len({tuple(r.tolist()) for r in sinusoid(32, 32)}) == 32  # every index its own code


def test_time_codes_added_per_frame_before_the_projector(tiny_vit):
    """Each (pooled) frame's tokens get that frame's code, the same code on all its tokens; with ``concat``
    only the feature half gets it, the change half none."""
    for kw, width in (({}, 1), ({"frame_deltas": "concat"}, 2)):
        adapter = _adapter(tiny_vit, temporal_pool=2, time_embedding="sinusoidal", **kw)
        (feats,) = adapter.encode(adapter.collate([_clip()]))
        timed = adapter.add_time(feats).view(4, adapter.tower.tokens_per_image, -1)
        added = timed - feats.view_as(timed)
        hidden = adapter.tower.hidden_size
        torch.testing.assert_close(added[..., :hidden], sinusoid(4, hidden)[:, None].expand_as(added[..., :hidden]))
        if width == 2:
            assert torch.equal(added[..., hidden:], torch.zeros_like(added[..., hidden:]))


def test_frame_deltas_are_the_change_since_the_previous_frame(tiny_vit):
    clip = _clip()
    plain = _adapter(tiny_vit)
    (f,) = plain.encode(plain.collate([clip]))
    f = f.view(8, plain.tower.tokens_per_image, -1)
    delta = torch.cat([torch.zeros_like(f[:1]), f[1:] - f[:-1]])
    (add,) = _adapter(tiny_vit, frame_deltas="add").encode(plain.collate([clip]))
    torch.testing.assert_close(add.view_as(f), f + delta)
    (cat,) = _adapter(tiny_vit, frame_deltas="concat").encode(plain.collate([clip]))
    torch.testing.assert_close(cat.view(8, plain.tower.tokens_per_image, -1), torch.cat([f, delta], -1))


def _per_frame(adapter, clip):
    (out,) = _tokens(adapter, [clip])
    return out.view(len(clip) // adapter.temporal_pool, adapter.tower.tokens_per_image, -1)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "+".join(o.values()))
def test_reversed_clip_reaches_the_lm_as_other_tokens(tiny_vit, option):
    """Without the options a reversed clip gives the forward clip's frame tokens in reverse order: the same bag
    of tokens, time only in where they sit. With an option each frame's tokens change with its place in time."""
    clip = _clip()
    plain = _adapter(tiny_vit)
    torch.testing.assert_close(_per_frame(plain, clip.flip(0)), _per_frame(plain, clip).flip(0), atol=1e-6, rtol=0)
    timed = _adapter(tiny_vit, **option)
    if option.get("time_embedding") == "learned":
        _learned_nonzero(timed)
    forward, reverse = _per_frame(timed, clip), _per_frame(timed, clip.flip(0))
    gap = (reverse - forward.flip(0)).abs().amax(dim=(1, 2))  # per frame
    assert (gap > 1e-3).all(), gap  # every frame: 8 frames have no middle one that keeps its place


def test_encoder_frozen_with_learned_frame_times(tiny_vit):
    """The learned frame times train with the projector, on the projector side: the encoder side stays a fixed
    function, so the policy and a frozen reference share one encoder pass per batch."""
    assert _adapter(tiny_vit, time_embedding="learned").encoder_frozen()
    assert not _adapter(tiny_vit, time_embedding="learned", freeze_encoder=False).encoder_frozen()
    frozen = _adapter(tiny_vit, time_embedding="learned", freeze_projector=True)
    assert not frozen.frame_time.requires_grad and frozen.encoder_frozen()


def _model(tiny_lm, tiny_vit, **kw):
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {"video": VideoAdapter(encoder=tiny_vit, num_frames=8, spatial_pool=2, **kw)})


def _batch(model):
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    adapter, out = model.adapters["video"], []
    for i, (c, r) in enumerate([("Left to right.", "Right to left."), ("Right to left.", "Left to right.")]):
        clip = _clip(seed=i)
        ids = tok([{"role": "user", "content": "<video>\nWhich way does the square move?"}],
                  {"chosen": c, "rejected": r}, {"video": [adapter.num_tokens(clip)]})
        out.append({"key": str(i), "media": {"video": [clip]}, **ids})
    return Collator("shared", model.tokenizer.pad_token_id, dict(model.adapters.items()))(out)


def test_frozen_reference_keeps_its_own_frame_times(tiny_lm, tiny_vit):
    policy = _model(tiny_lm, tiny_vit, time_embedding="learned").eval()
    reference = build_reference("frozen_copy", policy)
    assert reference.share_frozen_encoders(policy) == ["video"]  # the tower is shared, the frame times are not
    ref_adapter, adapter = reference.model.adapters["video"], policy.adapters["video"]
    assert ref_adapter.tower is adapter.tower and ref_adapter.frame_time is not adapter.frame_time
    batch = _batch(policy)
    before_policy, before_ref = policy(batch).logps, reference(batch).logps
    torch.testing.assert_close(before_policy, before_ref, atol=0, rtol=0)
    _learned_nonzero(adapter)  # the policy's frame times move, as in training
    cache = StepCache()
    moved = policy(batch, cache).logps
    assert (moved - before_policy).abs().max() > 1e-4
    torch.testing.assert_close(reference(batch, cache).logps, before_ref, atol=0, rtol=0)  # shared features too
    assert torch.equal(ref_adapter.frame_time, torch.zeros_like(ref_adapter.frame_time))


def test_learned_frame_times_train_and_round_trip(tmp_path, monkeypatch, tiny_vit):
    """A short fit on the demo clips: the frame times move from zero; the checkpoint holds them, the export holds
    the same values, and both reload to the same model (same log-probs)."""
    from safetensors.torch import load_file

    from anyalign.__main__ import main
    from anyalign.checkpoint import load_checkpoint
    from anyalign.export import load_aligned
    from anyalign.module import AlignModule

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(1)
    main(["fit", "--config", "configs/video_dpo.yaml", "--trainer.max_steps", "3", "--trainer.num_sanity_val_steps", "0",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
          "--data.batch_size", "2", "--trainer.default_root_dir", str(tmp_path), "--model.lr", "0.01",
          "--model.warmup_steps", "1", "--model.adapters.video.init_args.time_embedding", "learned"])
    key = "policy.adapters.video.frame_time"
    stored = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert key in stored and stored[key].shape == (8, 32)
    assert stored[key].abs().max() > 1e-3  # trained: it started at zero
    (export,) = tmp_path.glob("lightning_logs/version_*/export")
    assert torch.equal(load_file(str(export / "adapters" / "video" / "adapter.safetensors"))["frame_time"], stored[key])

    module = AlignModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt",
                                              adapters={"video": VideoAdapter(encoder=tiny_vit, num_frames=8,
                                                                              spatial_pool=2, time_embedding="learned")})
    assert torch.equal(module.policy.adapters["video"].frame_time, stored[key])
    reloaded = load_aligned(export)
    assert reloaded.adapters["video"].time_embedding == "learned"
    assert torch.equal(reloaded.adapters["video"].frame_time, stored[key])
    module.policy.eval()
    with torch.no_grad():
        batch = _batch(reloaded)
        torch.testing.assert_close(reloaded(batch).logps, module.policy(batch).logps, atol=1e-5, rtol=1e-5)


def test_options_are_checked(tiny_vit):
    too_long = _adapter(tiny_vit, num_frames=4, time_embedding="learned")
    with pytest.raises(ValueError, match="learned frame times for 4"):
        _tokens(too_long, [_clip(6)])
    with pytest.raises(ValueError, match="frame_deltas must be one of"):
        VideoAdapter(encoder=tiny_vit, frame_deltas="diff")
    with pytest.raises(ValueError, match="time_embedding must be one of"):
        VideoAdapter(encoder=tiny_vit, time_embedding="rope")
