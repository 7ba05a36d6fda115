"""Tiny random checkpoints of transformers' multimodal families (tools/tiny_family_builders/, the package behind
tools/tiny_families.py; docs/families.md): each builds in a tmp dir, reloads with no missing or unexpected keys, and
runs processor -> forward -> generate on small inputs, with as many placeholder tokens as the family's feature
function returns features."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# tools/ holds scripts that run on import (convert.py, ...): load this one package by path, not via sys.path
_init = Path(__file__).resolve().parents[1] / "tools" / "tiny_family_builders" / "__init__.py"
_spec = importlib.util.spec_from_file_location("tiny_family_builders", _init,
                                               submodule_search_locations=[str(_init.parent)])
tf = sys.modules.setdefault("tiny_family_builders", importlib.util.module_from_spec(_spec))
if tf.__spec__ is _spec:
    _spec.loader.exec_module(tf)

FAMILIES = list(tf.FAMILIES)

# What each processor call carries: SmolVLM's processor turns a video into frames of pixel_values, the same key as
# images, so its image and its video go in two calls; every other family takes all its modalities at once.
CASES = {name: [f.modalities] for name, f in tf.FAMILIES.items()}
CASES["smolvlm"] = [("image",), ("video",)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> (dir, build seconds); each family built once, on first use."""
    cache: dict[str, tuple[Path, float]] = {}

    def get(family: str) -> tuple[Path, float]:
        if family not in cache:
            t0 = time.perf_counter()
            path = tf.build(family, tmp_path_factory.mktemp(family))
            cache[family] = (path, time.perf_counter() - t0)
        return cache[family]
    return get


def load_model(family: str, path: Path):
    import transformers
    spec = tf.FAMILIES[family]
    cls = getattr(transformers, spec.auto_class)
    model, info = cls.from_pretrained(str(path), output_loading_info=True)
    return model.eval(), info


def image(seed: int, h: int = 40, w: int = 48):
    from PIL import Image
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def video(seed: int, frames: int = 4, size: int = 32) -> np.ndarray:
    return (np.random.default_rng(seed).random((frames, size, size, 3)) * 255).astype(np.uint8)


def audio(seed: int, seconds: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def sample(processor, modalities) -> tuple[str, dict]:
    content = [{"type": m} for m in modalities] + [{"type": "text", "text": "Describe it."}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    media = {}
    if "image" in modalities:
        media["images"] = [image(0)]
    if "video" in modalities:
        media["videos"] = [video(1)]
    if "audio" in modalities:
        media["audio"] = [audio(2)]
    return text, media


@pytest.mark.parametrize("family", FAMILIES)
def test_model_reloads_and_runs_text_only(family, built):
    """Everything but the processor: needs nothing beyond this project's dependencies."""
    path, seconds = built(family)
    model, info = load_model(family, path)
    assert type(model).__name__ == tf.FAMILIES[family].model_class
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert (path / "model.safetensors").is_file()
    from transformers import AutoModelForMultimodalLM
    assert AutoModelForMultimodalLM._model_mapping[type(model.config)] is type(model)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))
    ids = tok("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()
    print(f"\n{family}: built in {seconds:.2f} s, {tf.dir_size(path) / 1024:.0f} KiB")


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_forward_generate(family, built):
    missing = tf.missing_requirements(family)
    if missing:
        pytest.skip(f"{family}'s processor needs {', '.join(missing)} (not a dependency of this project): transformers "
                    f"5.x video processors are torchvision-only" + (", SmolVLMProcessor imports num2words"
                                                                     if "num2words" in missing else ""))
    from transformers import AutoProcessor
    path, _ = built(family)
    model, _ = load_model(family, path)
    processor = AutoProcessor.from_pretrained(str(path))
    assert type(processor).__name__ == tf.FAMILIES[family].processor_class
    vocab = model.config.get_text_config().vocab_size
    for modalities in CASES[family]:
        text, media = sample(processor, modalities)
        kwargs = {}
        if family == "qwen2_5_omni_thinker" and "videos" in media:
            # Qwen2_5OmniProcessor.videos_kwargs forces size >= 128*28*28 px per frame over the video processor's own
            kwargs["videos_kwargs"] = {"size": dict(processor.video_processor.size)}
        inputs = processor(text=text, return_tensors="pt", **media, **kwargs)
        placeholders = tf.placeholder_counts(model, inputs["input_ids"])
        features = tf.feature_counts(family, model, inputs)
        # SmolVLM writes a video as frames of image placeholders (<image>, image_token_id), with timestamps between
        expected = {"image"} if family == "smolvlm" else set(modalities)
        assert set(placeholders) == expected, (placeholders, text)
        assert placeholders == features, (placeholders, features)
        with torch.no_grad():
            logits = model(**inputs).logits
        assert logits.shape == (1, inputs["input_ids"].shape[1], vocab)
        assert torch.isfinite(logits).all()
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        n = inputs["input_ids"].shape[1]
        assert generated.shape[0] == 1 and n < generated.shape[1] <= n + 3  # eos may end it early
        print(f"\n{family} {'+'.join(modalities)}: placeholders {placeholders}, seq {inputs['input_ids'].shape[1]}")


def processor_inputs(family: str, built, modalities):
    missing = tf.missing_requirements(family)
    if missing:
        pytest.skip(f"{family}'s processor needs {', '.join(missing)}")
    from transformers import AutoProcessor
    path, _ = built(family)
    model, _ = load_model(family, path)
    processor = AutoProcessor.from_pretrained(str(path))
    text, media = sample(processor, modalities)
    return model, processor(text=text, return_tensors="pt", **media)


def test_gemma3_token_type_ids_make_each_image_bidirectional(built):
    """Gemma 3 attends bidirectionally inside an image block only when token_type_ids (the processor's, 1 on image
    tokens) reach forward; without them the same ids run fully causal and image positions get other logits."""
    model, x = processor_inputs("gemma3", built, ("image",))
    first = int((x["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    with torch.no_grad():
        with_types = model(**x).logits
        causal = model(**{k: v for k, v in x.items() if k != "token_type_ids"}).logits
    assert torch.allclose(with_types[:, :first], causal[:, :first], atol=1e-6)  # text before the image: same
    assert not torch.allclose(with_types[:, first], causal[:, first], atol=1e-4)  # image token sees the later ones


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_mrope_positions_come_from_mm_token_type_ids(family, built):
    """3-D M-RoPE positions are computed from mm_token_type_ids (processor output) and the grids: Qwen2-VL raises
    without them, Qwen2.5-VL silently falls back to 1-D positions (different logits)."""
    model, x = processor_inputs(family, built, ("image", "video"))
    inner = model.model
    args = dict(mm_token_type_ids=x["mm_token_type_ids"], image_grid_thw=x["image_grid_thw"],
                video_grid_thw=x["video_grid_thw"], attention_mask=x["attention_mask"])
    if family == "qwen2_5_vl":
        args["second_per_grid_ts"] = x["second_per_grid_ts"]
    position_ids, deltas = inner.get_rope_index(x["input_ids"], **args)
    L = x["input_ids"].shape[1]
    assert position_ids.shape == (3, 1, L) and int(position_ids.max()) + 1 - L == int(deltas)
    assert int(deltas) < 0  # an image/video spans fewer positions than tokens
    without = {k: v for k, v in x.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        logits = model(**x).logits
        if family == "qwen2_vl":
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                model(**without)
        else:
            assert not torch.allclose(model(**without).logits, logits, atol=1e-4)
        # explicit 3-D position_ids reproduce the processor path
        assert torch.allclose(model(**x, position_ids=position_ids).logits, logits, atol=1e-5)
