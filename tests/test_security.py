"""Shards are untrusted input and model repositories may carry code: a planted pickle is never unpickled
anywhere in training, and ``trust_remote_code`` is off unless the user turns it on. (Path escapes in the
dataset converters are covered in test_convert.py.)"""
import inspect
import io
import pickle

import numpy as np
import pytest
import torch
import transformers
import yaml

from anyalign.__main__ import main
from anyalign.data import PreferenceDataModule
from anyalign.data.pipeline import decode, read_shards, tokenize
from anyalign.data.template import PreferenceTokenizer
from anyalign.model import MultimodalLM
from anyalign.module import AlignModule
from modalities import ADAPTERS, ImageAdapter, VideoAdapter

from conftest import ROOT, jpeg_bytes, pair, write_shard
from test_corrupt_suite import Recorder, tiny_audio_encoder


class Plant:
    """Unpickling this creates ``path``: a harmless stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def payloads(target) -> dict[str, tuple[bytes, callable]]:
    """extension -> (bytes that create ``target`` when loaded, the loader that would load them)."""
    pth, npy = io.BytesIO(), io.BytesIO()
    torch.save(Plant(target), pth)
    np.save(npy, np.array([Plant(target)], dtype=object), allow_pickle=True)
    unpickle = (pickle.dumps(Plant(target)), lambda b: pickle.loads(b))
    load_torch = (pth.getvalue(), lambda b: torch.load(io.BytesIO(b), weights_only=False))
    return {"pyd": unpickle, "pickle": unpickle, "pkl": unpickle, "pth": load_torch, "pt": load_torch,
            "npy": (npy.getvalue(), lambda b: np.load(io.BytesIO(b), allow_pickle=True))}


def test_planted_pickles_never_run(tmp_path, monkeypatch):
    for ext, (data, load) in payloads(tmp_path / "canary").items():  # the payloads are live
        load(data)
        assert (tmp_path / "canary").exists(), ext
        (tmp_path / "canary").unlink()
    target = tmp_path / "pwned"
    planted = {ext: data for ext, (data, _) in payloads(target).items()}
    samples = [pair(f"safe-{i}", jpg=jpeg_bytes(i), **planted) for i in range(4)]
    samples.append(pair("pickle-as-jpg", jpg=planted["pyd"]))  # a pickle where an image should be
    shard = write_shard(tmp_path / "planted.tar", samples)

    # the pipeline stage by stage: pickles stay bytes, the samples go on with their image only
    model = MultimodalLM(str(ROOT / "assets" / "tiny-lm"),
                         {"image": ImageAdapter(str(ROOT / "assets" / "tiny-siglip"))})
    adapters = dict(model.adapters.items())
    raw = [r for r in read_shards(iter([shard])) if isinstance(r, dict)]
    assert all(r["pth"] == planted["pth"] and r["pyd"] == planted["pyd"] for r in raw[:4])
    out = list(tokenize(decode(iter(raw), adapters), PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256),
                        adapters))
    assert [x["key"] for x in out if isinstance(x, dict)] == [f"safe-{i}" for i in range(4)]
    assert all(set(x["media"]) == {"image"} and len(x["media"]["image"]) == 1 for x in out if isinstance(x, dict))
    assert "cannot decode image" in next(x.reason for x in out if not isinstance(x, dict))
    assert not target.exists()

    # and a real fit of a few steps, two data workers
    monkeypatch.chdir(ROOT)
    recorder = Recorder()
    own = AlignModule.configure_callbacks
    monkeypatch.setattr(AlignModule, "configure_callbacks", lambda self: own(self) + [recorder])
    main(["fit", "--config", "configs/image_dpo.yaml", "--data.train_shards", shard, "--data.val_shards", "null",
          "--data.batch_size", "2", "--data.num_workers", "2", "--trainer.max_steps", "4",
          "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--model.export_dir", "null"])
    assert sorted(k for k, _ in recorder.rows) == sorted([f"safe-{i}" for i in range(4)] * 2)  # 2 epochs of 2 steps
    assert {key for _, key, _ in recorder.skipped} == {"pickle-as-jpg"}
    assert not target.exists()


LOADERS = ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig", "AutoModel")


@pytest.fixture()
def loads(monkeypatch) -> list[tuple[str, str, object]]:
    """Every Auto* ``from_pretrained`` call: (loader, path, the trust_remote_code it got or "absent")."""
    calls = []
    for name in LOADERS:
        cls = getattr(transformers, name)
        real = cls.from_pretrained

        def spy(path, *args, _real=real, _name=name, **kwargs):
            calls.append((_name, str(path), kwargs.get("trust_remote_code", "absent")))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_trust_remote_code_defaults_off(loads, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(ROOT)
    for cls in (AlignModule, MultimodalLM, *ADAPTERS.values()):
        param = inspect.signature(cls.__init__).parameters.get("trust_remote_code")
        assert param is None or param.default is False, cls.__name__
    for config in (ROOT / "configs").rglob("*.yaml"):
        assert "trust_remote_code: true" not in config.read_text().lower(), config

    audio = ADAPTERS["audio"](encoder=tiny_audio_encoder(tmp_path_factory), max_seconds=1.0)
    AlignModule(adapters={"image": ImageAdapter(), "video": VideoAdapter(), "audio": audio})
    top = {(name, path) for name, path, trust in loads if trust is False}
    assert {("AutoModelForCausalLM", "assets/tiny-lm"), ("AutoTokenizer", "assets/tiny-lm"),
            ("AutoConfig", "assets/tiny-siglip")} <= top  # passed explicitly, as False
    assert all(trust in (False, "absent") for _, _, trust in loads), loads


@pytest.mark.parametrize("who", ["lm", "encoder"])
def test_trust_remote_code_only_where_set(loads, monkeypatch, who):
    monkeypatch.chdir(ROOT)
    AlignModule(trust_remote_code=who == "lm", adapters={"image": ImageAdapter(trust_remote_code=who == "encoder"),
                                                         "video": VideoAdapter()})
    lm = {trust for name, path, trust in loads if path == "assets/tiny-lm" and name != "AutoConfig"}
    encoder = [trust for name, path, trust in loads if path == "assets/tiny-siglip"]
    assert lm == {who == "lm"}
    half = len(encoder) // 2  # the image adapter's loads, then the video adapter's
    assert half and encoder == [who == "encoder"] * half + [False] * half


def test_cli_passes_trust_remote_code_through(loads, monkeypatch, tmp_path):
    from lightning.pytorch.cli import LightningCLI
    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load((ROOT / "configs" / "image_dpo.yaml").read_text())
    cfg["config"] = str(ROOT / "configs" / cfg["config"])  # the shared trainer include, relative to configs/
    cfg["model"]["adapters"]["image"]["init_args"]["trust_remote_code"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    LightningCLI(AlignModule, PreferenceDataModule, run=False, parser_kwargs={"parser_mode": "omegaconf"},
                 args=["--config", str(tmp_path / "c.yaml"), "--model.trust_remote_code", "true"])
    assert {trust for name, path, trust in loads if name in ("AutoModelForCausalLM", "AutoTokenizer")} == {True}
    assert {trust for name, path, trust in loads if "siglip" in path} == {True}
