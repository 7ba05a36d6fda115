"""Shared fixtures: the embedded default model, and helpers to write small shards for tests."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
sys.path.insert(0, str(Path(__file__).parent))  # test-local adapters importable by class_path


def pytest_configure(config):
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_lm() -> str:
    return str(ASSETS / "tiny-lm")


@pytest.fixture(scope="session")
def tiny_vit() -> str:
    return str(ASSETS / "tiny-siglip")


@pytest.fixture()
def image_model(tiny_lm, tiny_vit):
    from anyalign.model import MultimodalLM
    from modalities import ImageAdapter
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit)})


def jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict]) -> str:
    """samples: ``{"__key__": ..., "json": dict | bytes, ext: bytes}``; written in order with tarfile."""
    import tarfile
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for field, value in s.items():
                if field == "__key__":
                    continue
                data = json.dumps(value).encode() if isinstance(value, dict) else value
                info = tarfile.TarInfo(f"{s['__key__']}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def pair(key: str, prompt: str = "<image>\nWhat is this?", chosen: str = "A cat.", rejected: str = "A dog.",
         **media) -> dict:
    return {"__key__": key, "json": {"prompt": prompt, "chosen": chosen, "rejected": rejected}, **media}


def token_logps(model, ex: dict, name: str) -> torch.Tensor:
    """Per-token log-probs of one response by a plain Hugging Face forward on prompt + response with the
    example's media (logits shifted by one): the reference computation the shared stream is tested against."""
    ids = torch.tensor([ex["prompt"] + ex["responses"][name]])
    media = {m: model.adapters[m].collate(items) for m, items in ex["media"].items()}
    logp = model.lm(inputs_embeds=model.embed(ids, media)).logits.float().log_softmax(-1)
    p = len(ex["prompt"])
    return logp[0, p - 1:-1].gather(-1, ids[0, p:, None]).squeeze(-1)


def separate_logp(model, ex: dict, name: str) -> torch.Tensor:
    """The response's summed log-prob from ``token_logps``."""
    return token_logps(model, ex, name).sum()


def _tiny_family_builders():
    """tools/tiny_family_builders, loaded by path (tools/ holds scripts that run on import)."""
    import importlib.util
    init = ROOT / "tools" / "tiny_family_builders" / "__init__.py"
    if "tiny_family_builders" in sys.modules:
        return sys.modules["tiny_family_builders"]
    spec = importlib.util.spec_from_file_location("tiny_family_builders", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = sys.modules.setdefault("tiny_family_builders", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """family name -> directory of its tiny random checkpoint (built once per session, never downloaded)."""
    builders, built = _tiny_family_builders(), {}

    def get(family: str) -> str:
        if family not in built:
            missing = builders.missing_requirements(family)
            if missing:
                pytest.skip(f"{family}'s processor needs {missing}")
            built[family] = str(builders.build(family, tmp_path_factory.mktemp(family)))
        return built[family]
    return get
