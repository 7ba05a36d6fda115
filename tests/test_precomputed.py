"""model.reference=precomputed: the reference runs once, before training; training reads its log-probs next
to each sample, builds no reference model, and refuses a cache that does not describe the run."""
import io
import json
import math
import shutil
import tarfile

import pytest
import torch

from anyalign.__main__ import main
from anyalign.reference import StaleCache

from conftest import ROOT
from test_resume import _read

MDPO = ['--model.losses', json.dumps([{"name": "sigmoid", "beta": 0.1}, {"name": "conditional", "beta": 0.1}]),
        '--model.negatives', json.dumps({"image": [{"op": "gaussian_blur", "p": 0.5}, {"op": "null", "p": 0.5}]})]
# both conditional terms: the chosen and the rejected answer under the same corrupted image
MDPO_REJ = ['--model.losses', json.dumps([{"name": "sigmoid", "beta": 0.1}, {"name": "conditional", "beta": 0.1},
                                          {"name": "conditional_rejected", "beta": 0.1}]), *MDPO[2:]]
SEQUENCES = {"dpo": ["chosen", "rejected"], "mdpo-conditional": ["chosen", "chosen_corrupt", "rejected"],
             "mdpo-both": ["chosen", "chosen_corrupt", "rejected", "rejected_corrupt"]}


@pytest.fixture()
def shards(tmp_path, monkeypatch):
    """Copies of two demo shards (so a test may change them) and the run's working directory."""
    monkeypatch.chdir(ROOT)
    for name in ("train-000.tar", "val-000.tar"):
        shutil.copy(ROOT / "assets/data/image" / name, tmp_path / name)
    return tmp_path


def _args(cmd, tmp, cache, *extra, log=None, reference="precomputed"):
    callbacks = [{"class_path": "test_resume.Recorder", "init_args": {"path": str(log)}}] if log else []
    return [cmd, "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "6", "--data.batch_size", "8",
            "--data.train_shards", str(tmp / "train-000.tar"), "--data.val_shards", str(tmp / "val-000.tar"),
            "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.val_check_interval", "6", "--trainer.default_root_dir", str(tmp / f"run-{cmd}-{reference}"),
            "--data.num_workers", "2", "--model.export_dir", "null", "--trainer.callbacks", json.dumps(callbacks),
            "--model.reference", reference, "--model.reference_cache", str(cache), *extra]


def _no_frozen_copy(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a reference model was built")
    monkeypatch.setattr("anyalign.reference.FrozenCopy.__init__", refuse)


@pytest.mark.parametrize("extra, name", [([], "dpo"), (MDPO, "mdpo-conditional"), (MDPO_REJ, "mdpo-both")],
                         ids=["dpo", "mdpo-conditional", "mdpo-both"])
def test_precomputed_trains_like_frozen_copy(shards, monkeypatch, extra, name):
    cache = shards / "cache"
    main(_args("precompute", shards, cache, *extra))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert not list((shards / "run-precompute-precomputed").rglob("config.yaml"))  # fit's config is fit's to write
    assert manifest["sequences"] == SEQUENCES[name]
    main(_args("fit", shards, cache, *extra, log=shards / "fc.jsonl", reference="frozen_copy"))
    with monkeypatch.context() as m:
        _no_frozen_copy(m)
        main(_args("fit", shards, cache, *extra, log=shards / "pre.jsonl"))
    fc, pre = _read(shards / "fc.jsonl"), _read(shards / "pre.jsonl")
    assert len(pre) == len(fc) == 6
    assert [r["keys"] for r in pre] == [r["keys"] for r in fc]
    for a, b in zip(pre, fc):  # the same losses at every step, so the same training
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    # at the first step the policy is the reference: every term is log 2, so the cache holds the policy's values
    assert pre[0]["loss"] == pytest.approx(math.log(2) * (len(SEQUENCES[name]) - 1), abs=1e-5)


def test_no_reference_model_in_memory(shards, monkeypatch):
    from anyalign.module import AlignModule
    _no_frozen_copy(monkeypatch)
    module = AlignModule(lm=str(ROOT / "assets/tiny-lm"), reference="precomputed", reference_cache=str(shards / "c"))
    # the strategy holds fingerprints and a path, no module and no tensor
    assert not [v for v in vars(module.reference).values() if isinstance(v, (torch.nn.Module, torch.Tensor))]


def _rewrite_sample(path, key):
    """Change the rejected answer of one sample in a shard, keeping everything else."""
    out = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == f"{key}.json":
                record = json.loads(data)
                record["rejected"] = record["rejected"] + " Indeed."
                data = json.dumps(record).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize("change, message", [
    (["--data.max_length", "200"], r"data settings \['max_length'\] differ \(cache \[256\], this run \[200\]\)"),
    (["--seed_everything", "1"], r"the model differs .*initial policy's weights"),
    (["--model.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}"], "the template differs"),
    (["--model.adapters", json.dumps({"image": {"class_path": "modalities.ImageAdapter", "init_args": {
        "encoder": "assets/tiny-siglip", "spatial_pool": 2}}})], r"the model differs .*adapter settings"),
    (MDPO, r"holds \['chosen', 'rejected'\], but the loss terms need reference log-probs of \['chosen_corrupt'\]"),
], ids=["max_length", "seed", "template", "adapter", "sequences"])
def test_mismatched_cache_refused_at_start(shards, change, message):
    cache = shards / "cache"
    main(_args("precompute", shards, cache))
    with pytest.raises(StaleCache, match=message):
        main(_args("fit", shards, cache, *change))
    assert not (shards / "run-fit-precomputed" / "checkpoints").exists()  # refused before any training


def test_changed_or_unknown_shard_refused(shards):
    cache = shards / "cache"
    with pytest.raises(StaleCache, match="no reference cache at .*precompute"):
        main(_args("fit", shards, cache))
    main(_args("precompute", shards, cache))
    _rewrite_sample(shards / "train-000.tar", "img-train-000005")
    with pytest.raises(StaleCache, match=r"sample img-train-000005 of shard .*train-000.tar changed since"):
        main(_args("fit", shards, cache))
    shutil.copy(ROOT / "assets/data/image/train-001.tar", shards / "train-001.tar")
    with pytest.raises(StaleCache, match=r"no log-probs for shard .*train-001.tar"):
        main(_args("fit", shards, cache, "--data.train_shards", str(shards / "train-001.tar")))


def test_token_counts_are_checked(image_model):
    from anyalign.data.collate import Collator
    from anyalign.module import AlignModule
    from test_model import _examples
    module = AlignModule(lm=str(ROOT / "assets/tiny-lm"), reference="precomputed", reference_cache="unused")
    module.policy = image_model
    examples = _examples(image_model)
    for ex in examples:
        ex["reference"] = {"chosen": (-3.0, len(ex["responses"]["chosen"])), "rejected": (-4.0, 1)}
    batch = Collator("shared", image_model.tokenizer.pad_token_id, dict(image_model.adapters.items()))(examples)
    with pytest.raises(StaleCache, match="rejected of sample"):
        module._step(batch, "train")


@pytest.mark.parametrize("extra, message", [
    (['--model.losses', '[{"name": "kto"}]', "--data.unpair", "true"], "cannot store reference log-probs of 'kl'"),
    (['--model.losses', '[{"name": "sigmoid"}, {"name": "conditional"}]',
      '--model.negatives', '{"image": [{"op": "swap"}]}'], r"under model.negatives \['image.swap'\]"),
])
def test_batch_dependent_sequences_refused(shards, extra, message):
    with pytest.raises(ValueError, match=message):
        main(_args("precompute", shards, shards / "cache", *extra))


@pytest.mark.parametrize("layout", ["3 shards", "1 shard"])
def test_two_ranks_precompute_what_one_does(shards, layout):
    """DDP with two gloo processes: with 3 shards each rank writes the shards it read (2 on rank 0, 1 on
    rank 1); with 1 shard both read it and keep every other sample, writing a part each. Together the
    parts hold every sample once, with the single process's values."""
    import os
    import subprocess
    import sys

    from anyalign.reference.cache import ReferenceCache
    from test_distributed import free_port
    one, two = shards / "one", shards / "two"
    shutil.copy(ROOT / "assets/data/image/train-001.tar", shards / "train-001.tar")
    urls = [str(shards / n) for n in ("train-000.tar", "train-001.tar", "val-000.tar")]
    data = (["--data.train_shards", json.dumps(urls[:2])] if layout == "3 shards"
            else ["--data.train_shards", urls[0], "--data.val_shards", "null"])
    urls = urls if layout == "3 shards" else urls[:1]
    main(_args("precompute", shards, one, *data))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "anyalign", *_args("precompute", shards, two, *data), "--trainer.accelerator", "cpu",
           "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    parts = sorted(p.name for p in (two / "shards").iterdir())
    assert {p.split(".")[-2] for p in parts} == {"r0", "r1"}  # each rank wrote what it read
    assert len(parts) == (3 if layout == "3 shards" else 2)
    a, b = ReferenceCache(str(one), ""), ReferenceCache(str(two), "")
    a.fingerprint = json.loads((one / "manifest.json").read_text())["fingerprint"]["all"]
    b.fingerprint = json.loads((two / "manifest.json").read_text())["fingerprint"]["all"]
    assert a.fingerprint == b.fingerprint
    for url in urls:
        ea, eb = a._load_shard(url), b._load_shard(url)
        assert sorted(ea) == sorted(eb) and len(ea) == 64
        for key, (digest, lp, tk) in ea.items():
            assert eb[key][0] == digest and eb[key][2] == tk
            assert eb[key][1] == pytest.approx(lp, abs=1e-4)


def test_other_precision_is_used_with_a_warning(shards, caplog):
    cache = shards / "cache"
    main(_args("precompute", shards, cache))
    with caplog.at_level("WARNING", logger="anyalign"):
        main(_args("fit", shards, cache, "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "2"))
    assert caplog.text.count("computed at precision 32-true, this run trains at bf16-mixed") == 1  # said once
