"""Qwen2.5-Omni thinker (anyalign/families/omni.py): anyalign's log-probs equal the thinker's own forward in both
layouts, and gradients agree between layouts, for images, videos, audio and a video with its own soundtrack
(``use_audio_in_video``: the audio-visual demo shard, ``<video>`` + ``<audio>`` from one mp4 or a silent mp4 + flac)."""
from __future__ import annotations

import pytest
import torch
from test_families import batches, policy

from anyalign.data.collate import Collator
from anyalign.data.negatives import corrupt_examples, validate_negatives
from anyalign.data.pipeline import decode, read_shards, tokenize

FAMILY = "qwen2_5_omni_thinker"
# the video processor's own size (about 56x56 px per frame), not the Omni processor's forced 128*28*28 minimum
TINY_VIDEO = {"video": {"size": {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}}}
CASES = ["image", "video", "audio", "audio_visual"]


def omni_policy(tiny_family, **media):
    return policy(tiny_family, FAMILY, media={**TINY_VIDEO, **media})


def soundtrack(model, ids: torch.Tensor) -> bool:
    """A video block that opens with its audio: ``<|vision_bos|><|audio_bos|>``."""
    cfg = model.hf.config
    return bool(((ids[:-1] == cfg.vision_start_token_id) & (ids[1:] == cfg.audio_start_token_id)).any())


def examples(model, picks: list[tuple[str, str]]) -> list[dict]:
    """Decoded, tokenized demo samples by (modality shard, key), in the order asked."""
    adapters, tok, found = dict(model.adapters), model.preference_tokenizer(4096), {}
    for shard in sorted({m for m, _ in picks}):
        keys = {k for m, k in picks if m == shard}
        src = tokenize(decode(read_shards(iter([f"assets/data/{shard}/val-000.tar"])), adapters), tok, adapters)
        for ex in src:
            assert isinstance(ex, dict), ex  # not Skipped
            if ex["key"] in keys:
                found[shard, ex["key"]] = ex
                keys.discard(ex["key"])
            if not keys:
                break
    return [found[p] for p in picks]


def own_forward_logps(model, batch: dict) -> torch.Tensor:
    """The thinker's own forward (``model(**inputs).logits``, its own positions from ``get_rope_index``), one
    sequence (prompt + response) at a time, on one sample's batch, its log-probs gathered at the response tokens."""
    hf, ids, roles = model.hf, batch["input_ids"][0], batch["roles"][0]
    media = {k: v for d in batch["media"].values() for k, v in d.items()}
    prompt = ids[roles == 0]
    out = []
    for k in range(1, int(roles.max()) + 1):
        response = ids[roles == k]
        full = torch.cat([prompt, response])[None]
        logits = hf(input_ids=full, attention_mask=torch.ones_like(full), use_audio_in_video=soundtrack(model, prompt),
                    **media).logits[0].float()
        p = len(prompt)
        out.append(logits[p - 1:-1].log_softmax(-1).gather(-1, response[:, None]).sum())
    return torch.stack(out)


@pytest.mark.parametrize("modality", CASES)
def test_logps_equal_the_thinker_forward(tiny_family, modality):
    model = omni_policy(tiny_family).eval()
    check_logps(model, modality, soundtrack_expected=modality == "audio_visual")


def test_soundtrack_as_a_separate_clip(tiny_family):
    """``model.media.video.audio_in_video: false``: the audio-visual samples' audio is an item of its own."""
    model = omni_policy(tiny_family, video={**TINY_VIDEO["video"], "audio_in_video": False}).eval()
    check_logps(model, "audio_visual", soundtrack_expected=False)


def check_logps(model, modality: str, soundtrack_expected: bool) -> None:
    shared = batches(model, modality, "shared", 1)[0]
    assert soundtrack(model, shared["input_ids"][0]) == soundtrack_expected
    with torch.no_grad():
        own = own_forward_logps(model, shared)  # chosen, rejected: the order of the shared row's slots
    for layout in ("shared", "concatenated"):
        batch = shared if layout == "shared" else batches(model, modality, layout, 1)[0]
        with torch.no_grad():
            out = model(batch).logps
        ours = torch.stack([out[batch["index"][name][0]] for name in ("chosen", "rejected")])
        torch.testing.assert_close(ours, own, atol=1e-4, rtol=0, msg=f"omni {modality} {layout}")


@pytest.mark.parametrize("modality", CASES)
def test_gradients_equal_the_concatenated_layout(tiny_family, modality):
    grads = {}
    for layout in ("shared", "concatenated"):
        model = omni_policy(tiny_family).eval()
        batch = batches(model, modality, layout, 2)[0]
        out = model(batch)
        chosen, rejected = batch["index"]["chosen"], batch["index"]["rejected"]
        loss = -torch.nn.functional.logsigmoid(0.1 * (out.logps[chosen] - out.logps[rejected])).mean()
        loss.backward()
        grads[layout] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["shared"].keys() == grads["concatenated"].keys() and grads["shared"]
    for name, g in grads["shared"].items():
        scale = max(1.0, float(g.abs().max()))
        torch.testing.assert_close(g, grads["concatenated"][name], atol=1e-5 * scale, rtol=0, msg=name)


# one row each: an image, a video, a clip, a video with the soundtrack in its mp4, one with it in KEY.flac
MIXED = [("image", "img-val-000000"), ("video", "vid-val-000000"), ("audio", "aud-val-000000"),
         ("audio_visual", "av-val-000000"), ("audio_visual", "av-val-000005")]


def own_positions(model, batch: dict) -> list[torch.Tensor]:
    """The thinker's own 3-D positions (``get_rope_index`` on prompt + response alone), per response of a
    one-sample batch."""
    ids, roles = batch["input_ids"][0], batch["roles"][0]
    media = {k: v for d in batch["media"].values() for k, v in d.items()}
    prompt = ids[roles == 0]
    lengths = media["feature_attention_mask"].sum(-1) if "feature_attention_mask" in media else None
    out = []
    for k in range(1, int(roles.max()) + 1):
        full = torch.cat([prompt, ids[roles == k]])[None]
        pos, _ = model.hf.model.get_rope_index(full, media.get("image_grid_thw"), media.get("video_grid_thw"),
                                               torch.ones_like(full), soundtrack(model, prompt), lengths,
                                               media.get("video_second_per_grid"))
        out.append(pos[:, 0])
    return out


@pytest.mark.parametrize("layout", ["shared", "concatenated"])
def test_mixed_batch_rows_equal_their_own_forward(tiny_family, layout):
    """Rows of different media in one batch (row-wise positions: each row its own grids, audio lengths and
    use_audio_in_video) get exactly the positions the thinker gives each sample alone, and score as it does."""
    model = omni_policy(tiny_family).eval()
    adapters, pad = dict(model.adapters), model.tokenizer.pad_token_id
    exs = examples(model, MIXED)
    assert [soundtrack(model, torch.tensor(ex["prompt"])) for ex in exs] == [False, False, False, True, True]
    batch = Collator(layout, pad, adapters)(exs)
    with torch.no_grad():
        out = model(batch).logps
        positions = model.positions(batch, model.media_inputs(batch))
        for i, ex in enumerate(exs):
            alone = Collator("shared", pad, adapters)([ex])
            for name, own_pos in zip(("chosen", "rejected"), own_positions(model, alone)):
                seq = int(batch["index"][name][i])
                row = int((batch["target_seq"] == seq).any(1).nonzero()[0])
                roles = batch["roles"][row]
                slot = int(roles[batch["target_seq"][row] == seq][0])
                mine = positions[:, row][:, (roles == 0) | (roles == slot)]
                assert torch.equal(mine, own_pos), (MIXED[i], name, layout)
            own = own_forward_logps(model, alone)
            ours = torch.stack([out[batch["index"][name][i]] for name in ("chosen", "rejected")])
            torch.testing.assert_close(ours, own, atol=1e-4, rtol=0, msg=f"{MIXED[i]} {layout}")


@pytest.mark.parametrize("modality,op", [("audio", {"op": "noise", "snr_db": -20.0}), ("video", {"op": "reverse"})])
def test_corrupted_soundtrack_or_frames_keep_the_interleaving(tiny_family, modality, op):
    """A conditional negative of an audio-visual sample (its soundtrack or its frames corrupted, then processed
    again alone) takes the same placeholders, and its row scores as the thinker's own forward scores the prompt
    with the corrupted media."""
    model = omni_policy(tiny_family).eval()
    adapters, pad = dict(model.adapters), model.tokenizer.pad_token_id
    exs = examples(model, [("audio_visual", "av-val-000000"), ("audio_visual", "av-val-000005")])
    spec = validate_negatives({modality: [op]}, adapters)
    batch = Collator("shared", pad, adapters, negatives=spec)(exs)
    kind = next(name for name in batch["index"] if name not in ("chosen", "rejected"))
    corrupted = corrupt_examples(exs, spec, adapters, 0)  # what the collator drew (seeded by key)
    with torch.no_grad():
        out = model(batch).logps
        for i, ex in enumerate(exs):
            alone = Collator("shared", pad, adapters)([{**ex, "media": corrupted[i]}])
            own = own_forward_logps(model, alone)[0]  # the chosen response under the corrupted media
            clean = own_forward_logps(model, Collator("shared", pad, adapters)([ex]))[0]
            # the corruption changed what the model sees by more than the tolerance below, so a row scored under the
            # clean media would fail it (the tiny thinker hears little: noise on the sound's span moves it ~2e-4)
            assert (own - clean).abs() > 1e-4
            torch.testing.assert_close(out[batch["index"][kind][i]], own, atol=2e-5, rtol=0, msg=f"{kind} {i}")


def test_response_continues_from_the_last_prompt_token(tiny_family):
    """A prompt that ends right after a video whose soundtrack stops before its last frames (4 frames: temporal ids
    0 and 25; 0.3 s of audio: ids 0..6, after the frames in the chunk): the thinker's text resumes after the audio's
    ids, below the frames' largest, and the responses continue from there."""
    model = omni_policy(tiny_family).eval()
    adapters, pad = dict(model.adapters), model.tokenizer.pad_token_id
    ex = examples(model, [("audio_visual", "av-val-000000")])[0]
    media = {"video": [ex["media"]["video"][0][:4]], "audio": [ex["media"]["audio"][0][:4800]]}
    enc = model.preference_tokenizer(4096).encode([{"role": "user", "content": "<video>\n<audio>"}],
                                                  {"chosen": "A cat.", "rejected": "A dog."}, media)
    batch = Collator("shared", pad, adapters)([{"key": "edge", **enc}])
    roles = batch["roles"][0]
    own_pos = own_positions(model, batch)
    prompt_pos = own_pos[0][:, :int((roles == 0).sum())]
    assert prompt_pos[:, -1].max() < prompt_pos.max()  # the case: the prompt's last id is not its largest
    with torch.no_grad():
        positions = model.positions(batch, model.media_inputs(batch))
        for k, own in enumerate(own_pos, start=1):
            assert torch.equal(positions[:, 0][:, (roles == 0) | (roles == k)], own)
        ours = model(batch).logps
        torch.testing.assert_close(ours, own_forward_logps(model, batch), atol=1e-4, rtol=0)
