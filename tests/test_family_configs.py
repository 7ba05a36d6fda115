"""Each pretrained-family config (configs/<family>_dpo.yaml) runs through ``python -m anyalign fit`` on a tiny random
checkpoint of its family: the loss goes down, and the export loads with the family's own class and processor (no
missing or unexpected keys) and generates what the aligned policy generates."""
from __future__ import annotations

import csv
import glob
import math

import pytest
import torch
import yaml

from anyalign.__main__ import main

from conftest import ROOT

# config -> the tiny family checkpoint the test points it at
FAMILY_CONFIGS = {"llava_dpo": "llava", "llava_onevision_dpo": "llava_onevision", "qwen2_vl_dpo": "qwen2_vl",
                  "qwen2_5_vl_dpo": "qwen2_5_vl", "smolvlm_dpo": "smolvlm", "gemma3_dpo": "gemma3",
                  "qwen2_audio_dpo": "qwen2_audio", "qwen2_5_omni_dpo": "qwen2_5_omni_thinker"}


def test_every_family_config_is_tested():
    shipped = {p.stem for p in (ROOT / "configs").glob("*.yaml")
               if "adapters" not in (yaml.safe_load(p.read_text()).get("model") or {})}
    assert shipped == set(FAMILY_CONFIGS)


def first_samples(shard: str, n: int, dst) -> str:
    """A shard of the first ``n`` samples of ``shard`` (their members copied byte for byte)."""
    import tarfile
    keys = []
    with tarfile.open(shard) as src, tarfile.open(dst, "w") as out:
        for member in src.getmembers():
            key = member.name.split(".")[0]
            if key not in keys:
                if len(keys) == n:
                    break
                keys.append(key)
            out.addfile(member, src.extractfile(member))
    return str(dst)


def metrics(root) -> list[dict]:
    (path,) = glob.glob(f"{root}/**/metrics.csv", recursive=True)
    return list(csv.DictReader(open(path)))


@pytest.mark.parametrize("config", sorted(FAMILY_CONFIGS))
def test_family_config_fits_lowers_the_loss_and_exports(config, tiny_family, tmp_path, monkeypatch, capsys):
    family = FAMILY_CONFIGS[config]
    lm = tiny_family(family)
    spec = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    val = spec["data"]["val_shards"]
    four = first_samples(str(ROOT / val), 4, tmp_path / "four.tar")
    monkeypatch.chdir(ROOT)
    # trained on four pairs, measured on the same four every 4 steps: the config's method must fit them
    main(["fit", "--config", f"configs/{config}.yaml", "--model.lm", lm, "--trainer.precision", "32-true",
          "--model.lr", "5e-3", "--model.warmup_steps", "0", "--trainer.max_steps", "12",
          "--trainer.val_check_interval", "4", "--trainer.num_sanity_val_steps", "0",
          "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--data.train_shards", four, "--data.val_shards", four,
          "--data.batch_size", "2", "--data.num_workers", "0"])
    out = capsys.readouterr().out
    assert "bad samples skipped: 0" in out
    rows = metrics(tmp_path / "run")
    val_loss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val_loss) == 3 and all(math.isfinite(v) for v in val_loss)
    assert val_loss[-1] < val_loss[0] - 1e-3, val_loss

    import transformers
    from transformers import AutoProcessor
    (export,) = glob.glob(f"{tmp_path}/run/**/export/config.json", recursive=True)
    export = export.rsplit("/", 1)[0]
    arch = yaml.safe_load(open(f"{export}/config.json"))["architectures"][0]
    reloaded, info = getattr(transformers, arch).from_pretrained(export, output_loading_info=True)
    assert not any(info.values()), info
    processor = AutoProcessor.from_pretrained(export)

    # the aligned policy (from the last checkpoint) and the export answer alike, greedy
    from anyalign.generation import generate, prepare
    from anyalign.families import build_policy
    policy = build_policy(export, {}).eval()
    from anyalign.data.pipeline import decode, read_shards
    (sample,) = [s for s, _ in zip(decode(read_shards(iter([str(ROOT / val)])), dict(policy.adapters.items())), range(1))]
    prompt = {"prompt": sample["messages"][0]["content"], "media": sample["media"]}
    for modality in sample["media"]:
        assert policy.adapters[modality].placeholder in prompt["prompt"]
    ours = generate(policy, [prompt], max_new_tokens=6)[0]
    ready = prepare(policy, prompt)
    ids = torch.tensor([ready["ids"]])
    media = {}
    for m, items in ready["media"].items():
        media.update(policy.adapters[m].collate_samples([items]))
    extra = policy.family.generate_kwargs(policy.hf, ids[0]) if policy.family.generate_kwargs else {}
    if policy.family.positions is not None and policy.family.generate_kwargs is None:  # Qwen2-VL, Qwen2.5-VL
        mm = torch.zeros_like(ids, dtype=torch.int32)
        for value, m in ((1, "image"), (2, "video")):
            if m in policy.media_token_ids:
                mm[ids == policy.media_token_ids[m]] = value
        extra["mm_token_type_ids"] = mm
    if policy.family.bidirectional:
        extra["token_type_ids"] = torch.isin(ids, torch.tensor(policy.bidirectional_ids)).long()
    theirs = reloaded.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), **media, **extra,
                                      max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    expected = processor.tokenizer.decode([t for t in theirs.tolist() if t != processor.tokenizer.pad_token_id],
                                          skip_special_tokens=True)
    assert ours["tokens"] >= 1
    assert ours["response"] == expected
