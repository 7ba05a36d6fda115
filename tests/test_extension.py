"""A modality defined only here, outside anyalign: a sensor signal stored as raw little-endian float32
bytes (``KEY.sig``; never pickle). It trains through the real CLI by ``class_path``, its projector learns,
the held-out preference moves the right way, the export reloads it, and the entry-point group finds it.
It has a required constructor argument (deep-copied and pickled as the frozen reference and spawned data
workers do), its own corruption operator that takes a donor from the batch, a preview for ``inspect
--render``, and converter input: all with no edit under anyalign/."""
import copy
import pickle
import random
from importlib.metadata import EntryPoint

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from anyalign.__main__ import main
from modalities import BadSample, ModalityAdapter
from modalities.base import freeze, mlp_projector, uses_donor

from conftest import ROOT, pair, write_shard

SHAPES = ["a low line", "a high line", "a fast wave", "random noise"]
PROBE: dict = {}


DONORS: list = []


@uses_donor
def mix_in(items, rng, donor=None, amount: float = 1.0):
    """Another sample's signal in place of this one's (amount 1) or mixed in: needs a donor."""
    DONORS.append(donor is not None)
    return [(1 - amount) * x + amount * d for x, d in zip(items, donor)]


class SensorAdapter(ModalityAdapter):
    """Signal -> ``frames`` frames of ``frame`` samples -> frozen random Linear + GELU -> MLP projector."""
    placeholder = "<sensor>"
    extensions = ("sig",)
    operators = {"mix_in": mix_in}

    def __init__(self, frame: int, frames: int = 8, hidden: int = 32):
        super().__init__()
        self.frame, self.frames, self.hidden = frame, frames, hidden
        self.encoder = nn.Sequential(nn.Linear(frame, hidden), nn.GELU())
        freeze(self.encoder, True)
        self.projector = None

    def bind(self, lm_hidden_size: int) -> None:
        self.projector = mlp_projector(self.hidden, lm_hidden_size)

    def decode(self, data: bytes, ext: str) -> np.ndarray:
        if len(data) == 0 or len(data) % 4:
            raise BadSample(f"signal of {len(data)} bytes is not a whole number of float32 values")
        x = np.frombuffer(data, dtype="<f4")
        if not np.isfinite(x).all():
            raise BadSample("signal has NaN or inf values")
        return x

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        out = torch.zeros(self.frames * self.frame)
        n = min(len(raw), len(out))
        out[:n] = torch.from_numpy(raw[:n].copy())
        return out.view(self.frames, self.frame)

    def num_tokens(self, item: torch.Tensor) -> int:
        return self.frames

    def preview(self, data: bytes, ext: str):
        """The signal as a line plot, 256 x 64."""
        from PIL import Image, ImageDraw
        x = self.decode(data, ext)
        img = Image.new("RGB", (256, 64), "white")
        pts = [(i * 255 / max(1, len(x) - 1), 32 - 30 * float(np.clip(v, -1, 1))) for i, v in enumerate(x)]
        ImageDraw.Draw(img).line(pts, fill=(0, 0, 200), width=2)
        return img

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(batch))


class Probe(L.Callback):
    """Records the projector before and after fit, and the held-out results."""

    def _projector(self, module):
        return {k: v.detach().clone() for k, v in module.policy.adapters["sensor"].projector.state_dict().items()}

    def on_fit_start(self, trainer, pl_module):
        PROBE["before"] = self._projector(pl_module)

    def on_fit_end(self, trainer, pl_module):
        PROBE["after"] = self._projector(pl_module)
        PROBE["history"] = list(pl_module.val_history)
        PROBE["val_loss"] = float(trainer.callback_metrics["val/loss"])


def signal(shape: int, rng: random.Random) -> bytes:
    """128 samples whose shape shows in every frame (so no frame order is needed to tell them apart)."""
    t = np.linspace(0, 1, 128, dtype=np.float32)
    noise = np.array([rng.gauss(0, 1) for _ in t], dtype=np.float32)
    base = [np.full_like(t, -0.8), np.full_like(t, 0.8), np.sin(2 * np.pi * 16 * t + rng.uniform(0, 6)), noise][shape]
    return ((base * rng.uniform(0.8, 1.2) + 0.05 * noise).astype("<f4")).tobytes()


def shard(path, n: int, seed: int) -> str:
    rng, samples = random.Random(seed), []
    for i in range(n):
        c = i % len(SHAPES)
        r = (c + rng.randint(1, len(SHAPES) - 1)) % len(SHAPES)  # every shape chosen and rejected alike
        samples.append(pair(f"s{seed}-{i:03d}", "<sensor>\nWhat does the signal look like?",
                            f"It is {SHAPES[c]}.", f"It is {SHAPES[r]}.", sig=signal(c, rng)))
    rng.shuffle(samples)
    return write_shard(path, samples)


def test_out_of_tree_adapter_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    train = [shard(tmp_path / f"train-{i}.tar", 32, seed=i) for i in range(2)]
    val = shard(tmp_path / "val.tar", 16, seed=99)
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 60, "max_epochs": -1, "val_check_interval": 60, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": -1, "enable_progress_bar": False, "enable_checkpointing": False,
                    "logger": False, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "test_extension.Probe"}]},
        "model": {"lm": "assets/tiny-lm", "lr": 3.0e-3, "warmup_steps": 5,
                  "export_dir": str(tmp_path / "export"),
                  "adapters": {"sensor": {"class_path": "test_extension.SensorAdapter",
                                          "init_args": {"frame": 16, "frames": 8}}},
                  "losses": [{"name": "sigmoid", "weight": 1.0, "beta": 0.1}]},
        "data": {"train_shards": train, "val_shards": val, "batch_size": 8, "num_workers": 0, "max_length": 128},
    }
    (tmp_path / "sensor.yaml").write_text(yaml.safe_dump(config))
    PROBE.clear()
    main(["fit", "--config", str(tmp_path / "sensor.yaml")])
    out = capsys.readouterr().out

    before, after = PROBE["before"], PROBE["after"]
    assert before.keys() == after.keys()
    assert all((after[k] - before[k]).abs().max() > 1e-3 for k in before)  # every projector tensor trained
    first, last = PROBE["history"][0], PROBE["history"][-1]
    assert first["step"] == 0 and first["ties"] == first["pairs"] == 16  # policy == reference before training
    assert last["step"] == 60 and last["accuracy"] >= 0.75, PROBE["history"]
    assert PROBE["val_loss"] < 0.6  # below log(2), the DPO loss of an untrained policy
    assert "held-out reward accuracy" in out

    from anyalign.export import load_aligned
    reloaded = load_aligned(tmp_path / "export")
    assert type(reloaded.adapters["sensor"]) is SensorAdapter
    got = reloaded.adapters["sensor"].projector.state_dict()
    assert all(torch.equal(got[k], after[k]) for k in after)


def test_entry_point_adapter_is_found(monkeypatch):
    import modalities.registry as registry

    # registry.py binds importlib.metadata.entry_points by name at import, so that name is patched
    eps = [EntryPoint(name="sensor", value="test_extension:SensorAdapter", group="anyalign.modalities")]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "anyalign.modalities" else [])
    monkeypatch.setattr(registry, "ADAPTERS", dict(registry.ADAPTERS))
    assert "sensor" not in registry.ADAPTERS
    assert registry.get_adapter_class("sensor") is SensorAdapter
    assert "sensor" in registry.load_entry_points()

    eps[:] = [EntryPoint(name="bogus", value="test_extension:Probe", group="anyalign.modalities")]
    with pytest.raises(TypeError, match="is not a ModalityAdapter"):
        registry.get_adapter_class("bogus")


def test_required_argument_survives_deepcopy_and_pickle():
    adapter = SensorAdapter(12, hidden=8)
    assert adapter.init_args == {"frame": 12, "frames": 8, "hidden": 8}
    for clone in (copy.deepcopy(adapter), pickle.loads(pickle.dumps(adapter))):
        assert type(clone) is SensorAdapter and clone.init_args == adapter.init_args and clone.frame == 12
        assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), adapter.state_dict().values()))


def test_own_donor_operator_preview_and_conditional_fit(tmp_path, monkeypatch, capsys):
    """mDPO's conditional term with the adapter's own donor-needing operator through the real CLI (the
    collator finds it a donor), and ``inspect --render`` draws the adapter's own preview."""
    monkeypatch.chdir(ROOT)
    train = [shard(tmp_path / "train-0.tar", 16, seed=0)]
    config = {
        "trainer": {"max_steps": 3, "max_epochs": -1, "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_checkpointing": False, "logger": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"lm": "assets/tiny-lm", "export_dir": None,
                  "adapters": {"sensor": {"class_path": "test_extension.SensorAdapter", "init_args": {"frame": 16}}},
                  "losses": [{"name": "sigmoid"}, {"name": "conditional"}],
                  "negatives": {"sensor": [{"op": "mix_in", "p": 1.0, "amount": 0.9}]}},
        "data": {"train_shards": train, "batch_size": 4, "num_workers": 0, "max_length": 128},
    }
    (tmp_path / "cond.yaml").write_text(yaml.safe_dump(config))
    DONORS.clear()
    main(["fit", "--config", str(tmp_path / "cond.yaml")])
    assert len(DONORS) >= 12 and all(DONORS)  # >= 3 steps x 4 samples (the loader reads one batch ahead), each with a donor

    out = tmp_path / "sensor.png"
    main(["inspect", train[0], "--config", str(tmp_path / "cond.yaml"), "--render", "s0-000", "--out", str(out)])
    from PIL import Image
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    blue = (img[..., 2] > 150) & (img[..., 0] < 60) & (img[..., 1] < 60)
    assert blue.sum() > 200  # the preview's plotted signal is in the page


def test_converter_takes_the_adapters_marker_and_extension(tmp_path, capsys):
    """``convert jsonl`` with ``--adapter sensor=...``: the marker and the member extension are the adapter's,
    and the shard it writes trains (its sample decodes with this adapter)."""
    import json
    import tarfile

    from anyalign.data.pipeline import Skipped, decode, read_shards
    (tmp_path / "a.sig").write_bytes(signal(2, random.Random(0)))
    rows = [{"id": "one", "prompt": "<sensor>\nWhat does the signal look like?", "chosen": "A fast wave.",
             "rejected": "A low line.", "media": {"sensor": ["a.sig"]}},
            {"id": "two", "prompt": "No marker here.", "chosen": "x", "rejected": "y", "media": {"sensor": ["a.sig"]}}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    main(["convert", "jsonl", str(tmp_path / "rows.jsonl"), str(tmp_path / "out-%03d.tar"),  # exits 0: one written
          "--adapter", "sensor=test_extension.SensorAdapter"])
    out = capsys.readouterr().out
    assert "1 written" in out and "0 <sensor> marker(s) but 1 sensor item(s)" in out
    with tarfile.open(tmp_path / "out-000.tar") as tar:
        assert sorted(tar.getnames()) == ["one.json", "one.sig"]
    adapter = SensorAdapter(16)
    [sample] = decode(read_shards(iter([str(tmp_path / "out-000.tar")])), {"sensor": adapter})
    assert not isinstance(sample, Skipped) and sample["media"]["sensor"][0].shape == (8, 16)
