"""``python -m anyalign evaluate``: on held-out video shards (12 demo samples with answers and choices, plus one
whose clip does not decode), the initial model, a briefly aligned export and its last checkpoint. The preference
numbers are validate's own, ties are counted apart, the aligned model beats the initial one, choice accuracy comes
from the choices' log-probs, the bad sample is skipped by name, and the table, eval.json and eval.png are written."""
import json
import math
import os
import tarfile

import pytest
import torch

from anyalign.cli import build_cli, main
from anyalign.data.template import PreferenceTokenizer
from anyalign.evaluation.report import format_table, short_names

from conftest import ASSETS, ROOT, separate_logp, write_shard

CONFIG = "configs/video_dpo.yaml"
VAL = ASSETS / "data" / "video" / "val-000.tar"
OPERATORS = ["video/shuffle_frames", "video/reverse", "video/static", "video/drop_segment", "video/downsample",
             "video/swap"]  # every video operator, freeze_video being static's alias


def _shard(path, n=12):
    """The first n demo samples (json with answer and choices, mp4), then one whose mp4 is not a video."""
    samples = {}
    with tarfile.open(VAL) as tar:
        for m in tar:
            key, _, field = m.name.partition(".")
            if len(samples) == n and key not in samples:
                break
            samples.setdefault(key, {"__key__": key})[field] = tar.extractfile(m).read()
    bad = {"__key__": "vid-bad", "json": json.dumps({"prompt": "<video>\nWhat does this video show?",
                                                     "chosen": "A cat.", "rejected": "A dog.", "answer": "a cat"}).encode(),
           "mp4": b"\x00\x00\x00\x18ftypmp42 not a video at all"}
    return write_shard(path, [*samples.values(), bad])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The video demo trained briefly with DPO + the chosen answer's NLL (checkpointed and exported), then
    evaluated: initial, the export, the last checkpoint."""
    tmp = tmp_path_factory.mktemp("eval")
    shard = _shard(tmp / "val.tar")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        main(["fit", "--config", CONFIG, "--model.losses", '[{"name": "sigmoid"}, {"name": "sft"}]',
              "--model.reward_term", "sigmoid", "--trainer.max_steps", "150", "--trainer.val_check_interval", "150",
              "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp), "--data.num_workers", "0", "--model.export_dir", str(tmp / "export")])
        ckpt = tmp / "checkpoints" / "last.ckpt"
        assert ckpt.is_file()
        import io
        from contextlib import redirect_stdout
        buf = io.StringIO()
        with redirect_stdout(buf):
            main(["evaluate", "--config", CONFIG, "--models", "initial", str(tmp / "export"), str(ckpt),
                  "--shards", shard, "--out", str(tmp / "out"), "--max-new-tokens", "8", "--data.num_workers", "0"])
    finally:
        os.chdir(cwd)
    report = json.loads((tmp / "out" / "eval.json").read_text())
    return {"tmp": tmp, "shard": shard, "ckpt": str(ckpt), "export": str(tmp / "export"), "stdout": buf.getvalue(),
            "report": report, "models": report["models"]}


def _validate(shard, *extra):
    """``python -m anyalign validate`` on the same shards: its logged metrics and held-out verdicts."""
    cli = build_cli(["validate", "--config", str(ROOT / CONFIG), "--data.val_shards", shard, "--trainer.logger",
                     "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0", *extra], run=True)
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}, cli.model.val_history[-1]


def test_outputs_table_json_png(evaluated):
    out, models = evaluated["tmp"] / "out", evaluated["models"]
    assert list(models) == ["initial", evaluated["export"], evaluated["ckpt"]]  # the order given
    from PIL import Image
    png = Image.open(out / "eval.png")
    assert png.size[0] >= 900 and png.size[1] >= 700
    lines = evaluated["stdout"].splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    names = short_names(list(models))
    assert lines[head].split()[1:] == [names[s] for s in models]
    assert (names["initial"], names[evaluated["ckpt"]]) == ("initial", "checkpoints/last.ckpt")
    table = format_table(models)
    assert "\n".join(lines[head:head + len(table.splitlines())]) == table  # printed as the JSON says
    for row in ["preference accuracy (per pair) (n=12)", "ties (not counted as right) (n=12)", "mean reward margin",
                "val loss", "generation exact match (n=12)", "generation answer contained (n=12)",
                "choice accuracy (mean log-prob per token) (n=12)", "choice accuracy (summed log-prob) (n=12)",
                "answer unchanged, video replaced (lower is better) (n=12)",
                *(f"media reliance {op} (nats) (n=12)" for op in OPERATORS)]:
        assert row in table, row
    assert "[anyalign] skipped vid-bad" in evaluated["stdout"]


def test_preference_numbers_are_validates(evaluated, monkeypatch):
    monkeypatch.chdir(ROOT)
    models = evaluated["models"]
    for name, extra in (("initial", ()), (evaluated["ckpt"], ("--ckpt_path", evaluated["ckpt"]))):
        logged, verdicts = _validate(evaluated["shard"], *extra)
        pref = models[name]["preference"]
        assert abs(pref["loss"] - logged["val/loss"]) < 1e-6
        assert abs(pref["margin"] - logged["val/rewards/margins"]) < 1e-6
        assert abs(pref["accuracy"] - logged["val/rewards/accuracies"]) < 1e-6
        assert (pref["ties"], pref["count"]) == (verdicts["ties"], verdicts["pairs"]) == (pref["ties"], 12)
    # the export is the checkpoint's policy: the same numbers
    a, b = models[evaluated["export"]]["preference"], models[evaluated["ckpt"]]["preference"]
    for k in ("accuracy", "ties", "margin", "loss"):
        assert abs(a[k] - b[k]) < 1e-6, k


def test_aligned_beats_initial_and_ties_apart(evaluated):
    initial, aligned = evaluated["models"]["initial"], evaluated["models"][evaluated["export"]]
    p0, p1 = initial["preference"], aligned["preference"]
    # the initial policy is the reference: every pair ties, and a tie is not half right
    assert (p0["ties"], p0["correct"], p0["accuracy"], p0["margin"]) == (12, 0, 0.0, 0.0)
    assert p1["accuracy"] > p0["accuracy"] and p1["correct"] + p1["ties"] <= p1["count"] == 12
    assert p1["accuracy"] == p1["correct"] / p1["count"] and p1["margin"] > 0
    for model in (initial, aligned):
        assert list(model["media_reliance"]) == OPERATORS
        assert all(math.isfinite(r["nats"]) and r["samples"] == 12 for r in model["media_reliance"].values())
        # each operator's own pass: before the fix every pass corrupted with the adapter's default reliance
        # operator (the loader read data.held_out_negatives, not the pass's spec), so all six figures were equal
        assert len({round(r["nats"], 4) for r in model["media_reliance"].values()}) >= 3
    assert aligned["media_reliance"]["video/swap"]["nats"] > initial["media_reliance"]["video/swap"]["nats"] + 1
    # trained to read its clip: most answers change when another sample's clip replaces it
    unchanged = aligned["unchanged_answers"]["video"]
    assert unchanged["samples"] == 12 and unchanged["replaced_by"] == {"swap": 12} and unchanged["rate"] <= 0.5
    assert 0 <= initial["unchanged_answers"]["video"]["rate"] <= 1


def test_choice_accuracy_comes_from_the_choices(evaluated):
    from anyalign.export import load_aligned
    aligned = evaluated["models"][evaluated["export"]]
    ch = aligned["choices"]
    assert ch["samples"] == 12 and 0 <= ch["accuracy_sum"] <= 1 and 0 <= ch["accuracy_mean"] <= 1
    records = aligned["answers"]
    assert ch["accuracy_mean"] == sum(r["choice_by_mean"] == r["correct_choice"] for r in records) / 12
    assert ch["accuracy_sum"] == sum(r["choice_by_sum"] == r["correct_choice"] for r in records) / 12
    model = load_aligned(evaluated["export"])
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    from anyalign.data.pipeline import decode, read_shards
    examples = {e["key"]: e for e in decode(read_shards(iter([evaluated["shard"]])), dict(model.adapters.items()))
                if isinstance(e, dict)}
    for rec in records[:2]:  # each choice scored as the response, by a plain forward per choice
        ex = examples[rec["key"]]
        assert rec["choices"] == ex["choices"] and rec["correct_choice"] == ex["correct_choice"]
        sizes = {m: [model.adapters[m].num_tokens(x) for x in items] for m, items in ex["media"].items()}
        ids = tok(ex["messages"], {str(k): c for k, c in enumerate(ex["choices"])}, sizes)
        with torch.no_grad():
            plain = [float(separate_logp(model, {**ids, "media": ex["media"]}, str(k))) for k in range(len(ex["choices"]))]
        assert plain == pytest.approx(rec["choice_logps"], abs=1e-3)
        assert rec["choice_tokens"] == [len(ids["responses"][str(k)]) for k in range(len(ex["choices"]))]
        means = [lp / t for lp, t in zip(plain, rec["choice_tokens"])]
        assert rec["choice_by_sum"] == max(range(len(plain)), key=plain.__getitem__)
        assert rec["choice_by_mean"] == max(range(len(means)), key=means.__getitem__)


def test_bad_sample_is_skipped_and_named(evaluated):
    for model in evaluated["models"].values():
        assert [s["key"] for s in model["skipped"]] == ["vid-bad"] and model["skipped"][0]["reason"]
        assert "vid-bad" not in {r["key"] for r in model["answers"]}
        assert model["generation"]["samples"] == 12
    assert "samples skipped" in evaluated["stdout"] and "1 sample(s) skipped" in evaluated["stdout"]


def test_negatives_from_the_config_and_limit(evaluated, tmp_path, monkeypatch, capsys):
    """A config with model.negatives measures those operators only; --limit reads the first N samples."""
    monkeypatch.chdir(ROOT)
    main(["evaluate", "--config", CONFIG, "--shards", evaluated["shard"], "--out", str(tmp_path), "--limit", "5",
          "--max-new-tokens", "4", "--data.num_workers", "0", "--model.negatives",
          '{"video": [{"op": "drop_segment", "fraction": 0.4}, {"op": "swap"}]}'])
    initial = json.loads((tmp_path / "eval.json").read_text())["models"]["initial"]
    assert list(initial["media_reliance"]) == ["video/drop_segment(fraction=0.4)", "video/swap"]
    assert initial["preference"]["count"] == initial["generation"]["samples"] == initial["choices"]["samples"] == 5
    assert initial["preference"]["ties"] == 5 and initial["skipped"] == []
    assert "choice accuracy (mean log-prob per token) (n=5)" in capsys.readouterr().out


def test_unpaired_accuracy_is_labelled_per_sample():
    results = {"initial": {"preference": {"unit": "sample", "count": 96, "accuracy": 0.5, "ties": 0, "margin": None,
                                          "loss": 0.7}, "media_reliance": {}, "skipped": []}}
    table = format_table(results)
    assert "preference accuracy (per sample, unpaired: not per pair) (n=96)" in table
    assert "mean reward margin" not in table  # KTO logs no margin: no row rather than a made-up one
