"""Qwen2.5-Omni (the thinker, ``model_type`` ``qwen2_5_omni_thinker``): what it needs beyond the shared family code.

The thinker's ``model.model`` is a full multimodal forward (towers, audio encoder, placeholder scatter) that takes
``position_ids``, so ``FamilyLM`` runs it as it runs the others. Two things differ:

- **a video's own soundtrack** (``use_audio_in_video``): when a prompt has as many ``<audio>`` markers as ``<video>``
  markers, the k-th audio item is the k-th video's soundtrack (the audio-visual shards: ``<video>`` + ``<audio>``
  read from one mp4, or a silent mp4 + ``KEY.flac``). The ``<audio>`` markers then render nothing; the processor
  (``load_audio_from_video``, the audio given per video) writes each video as ``<|vision_bos|><|audio_bos|>`` +
  its frames' and its audio's placeholders interleaved in 2 s chunks + ``<|audio_eos|><|vision_eos|>``.
  ``model.media.video.audio_in_video: false`` keeps them separate items (a video, then an audio clip);
- **positions**: the thinker's ``get_rope_index`` (keyed on the vision / audio start tokens, with audio lengths and
  seconds per temporal grid, and ``use_audio_in_video`` for the whole call), run row by row, each row with its own
  media and its own ``use_audio_in_video``.

Video options read here (``model.media.video``): ``fps`` (frames sampled at that rate, which the processor is told,
so frame times are exact; without it frames are spread over the clip and the processor assumes 2 fps) and ``size``
(the processor's ``{"shortest_edge", "longest_edge"}`` in pixels per frame, replacing the Omni processor's forced
minimum of 128*28*28; tiny test frames stay tiny).
"""
from __future__ import annotations

import torch

from modalities import BadSample

from .spec import sampling_rate
from .template import FamilyTokenizer


class OmniTokenizer(FamilyTokenizer):
    """``FamilyTokenizer`` plus the video's soundtrack (see the module docstring)."""

    def __init__(self, processor, adapters: dict, max_length: int):
        super().__init__(processor, adapters, max_length)
        video = adapters.get("video")
        options = video.options if video is not None else {}
        self.audio_in_video = bool(options.get("audio_in_video", True)) and "audio" in adapters and video is not None
        videos_kwargs = {}
        if options.get("size") is not None:
            videos_kwargs["size"] = dict(options["size"])
        if options.get("fps"):
            videos_kwargs["fps"] = float(options["fps"])
        if videos_kwargs:  # on the processor itself, so corrupted copies (FamilyMedia.process) get them too
            processor.videos_kwargs = {**processor.videos_kwargs, **videos_kwargs}

    def soundtracks(self, messages: list[dict]) -> int:
        """How many videos carry their soundtrack in this prompt: all of them when it has as many ``<audio>`` as
        ``<video>`` markers, else none."""
        if not self.audio_in_video:
            return 0
        text = " ".join(m["content"] for m in messages)
        videos, audios = text.count(self.adapters["video"].placeholder), text.count(self.adapters["audio"].placeholder)
        return videos if videos == audios else 0

    def structured(self, messages: list[dict]) -> list[dict]:
        out = super().structured(messages)
        if self.soundtracks(messages):  # the audio is the video's: it renders inside the video's block
            out = [{**m, "content": [c for c in m["content"] if c.get("type") != "audio"]} for m in out]
        return out

    def process_prompt(self, messages: list[dict], media: dict) -> tuple[str, dict]:
        n = self.soundtracks(messages)
        if not n:
            return super().process_prompt(messages, media)
        videos, audios = media.get("video", []), media.get("audio", [])
        if len(videos) != n or len(audios) != n:
            raise BadSample(f"prompt has {n} <video> and {n} <audio> marker(s) but the sample has {len(videos)} "
                            f"video and {len(audios)} audio item(s)")
        extra = set(media) - set(self.adapters)
        if extra:
            raise BadSample(f"this model takes no {min(extra)}")
        prefix = self.render(messages)
        kwargs = {self.adapters[m].family.processor_keys[m]: [self.adapters[m].to_processor(x) for x in items]
                  for m, items in media.items()}
        kwargs.update(sampling_rate(self.processor, set(media)))
        bos = self.tokenizer.bos_token
        add_special = not (bos is not None and prefix.startswith(bos))
        out = self.processor(text=[prefix], return_tensors="pt", add_special_tokens=add_special,
                             load_audio_from_video=True, audio_from_video_indices=list(range(n)), **kwargs)
        return prefix, out


def positions(hf_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: dict) -> torch.Tensor:
    """3-D positions ``(3, rows, T)`` from the thinker's ``get_rope_index``, one row at a time: each row gets its
    own images, videos and audios (the batch's media are in row order) and its own ``use_audio_in_video`` (a video
    block that opens with ``<|audio_bos|>``)."""
    cfg = hf_model.config
    vision_start, audio_start = cfg.vision_start_token_id, cfg.audio_start_token_id
    image_grid, video_grid = media.get("image_grid_thw"), media.get("video_grid_thw")
    seconds = media.get("video_second_per_grid")
    features_mask = media.get("feature_attention_mask")
    audio_lengths = features_mask.sum(-1) if features_mask is not None else None
    done = {"image": 0, "video": 0, "audio": 0}
    rows = []
    for row, mask in zip(input_ids, attention_mask):
        ids = row[mask.bool()]
        opened = ids[1:][ids[:-1] == vision_start]  # the token after each vision start
        with_sound = int((opened == audio_start).sum())
        counts = {"image": int((opened == cfg.image_token_id).sum()),
                  "video": int((opened == cfg.video_token_id).sum()) + with_sound,
                  "audio": int((ids == audio_start).sum())}
        if with_sound and counts["video"] != with_sound:
            raise ValueError("a row mixes videos with and without their soundtrack; the thinker's get_rope_index "
                             "takes one use_audio_in_video per call")
        pos, _ = hf_model.model.get_rope_index(
            row[None], image_grid_thw=_take(image_grid, done, counts, "image"),
            video_grid_thw=_take(video_grid, done, counts, "video"), attention_mask=mask[None],
            use_audio_in_video=bool(with_sound), audio_seqlens=_take(audio_lengths, done, counts, "audio"),
            second_per_grids=_take(seconds, done, counts, "video"))
        rows.append(pos)
        for kind in done:
            done[kind] += counts[kind]
    return torch.cat(rows, 1)


def _take(values: torch.Tensor | None, done: dict, counts: dict, kind: str) -> torch.Tensor | None:
    """This row's entries of a batch tensor of ``kind`` (the rows before it used ``done[kind]``)."""
    if values is None or not counts[kind]:
        return None
    return values[done[kind]:done[kind] + counts[kind]]


def generate_kwargs(hf_model, ids: torch.Tensor) -> dict:
    """A prompt's ``use_audio_in_video`` for the thinker's ``generate``: whether its video blocks open with
    ``<|audio_bos|>`` (one flag per call, so ``FamilyLM.generate_ids`` groups prompts by it)."""
    cfg = hf_model.config
    opened = ids[1:][ids[:-1] == cfg.vision_start_token_id]
    return {"use_audio_in_video": bool((opened == cfg.audio_start_token_id).any())}
