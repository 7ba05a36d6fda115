"""The command line as a user meets it: a config run from another directory, one-line errors (a misspelt key names
the closest valid ones, a missing path names itself and its key), no library notices that are not the user's
business, --help with anyalign's options first, a progress bar in steps of max_steps, a held-out number after
training, and an end-of-fit summary that says what it counts."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from anyalign.__main__ import main
from anyalign.cli import quiet_libraries  # Lightning imported at collection: its log handler takes the real stderr

from conftest import ROOT

CONFIG = str(ROOT / "configs" / "image_dpo.yaml")

# what the libraries printed in every run before they were silenced (see anyalign.cli.quiet_libraries)
NOISE = ["💡 Tip", "TPU available", "LeafSpec", "module(s) in eval mode", "The new embeddings will be initialized",
         "is_gradient_checkpointing"]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines()
            if line.strip() and "Seed set to" not in line and not line.startswith("Loading weights")]


def fails(args: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    return error_lines(capsys)


# ---- a run from another directory: paths, notices, progress bar, summary ----

def test_fit_from_another_directory(tmp_path):
    """From /tmp-like directory: the config's relative paths (assets/..., as the shipped configs write them, relative
    to the repository root) are found next to the config; the output is anyalign's and Lightning's useful lines."""
    cmd = [sys.executable, "-m", "anyalign", "fit", "--config", CONFIG, "--trainer.max_steps", "2",
           "--trainer.limit_val_batches", "2", "--data.num_workers", "0", "--data.batch_size", "4",
           "--trainer.default_root_dir", "runs/here"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    run = tmp_path / "runs/here/lightning_logs/version_0"  # outputs stay relative to the current directory
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "export" / "anyalign.json").is_file()
    config = (run / "config.yaml").read_text()
    assert f"lm: {ROOT / 'assets/tiny-lm'}" in config and f"{ROOT / 'assets/data/image/train-'}" in config
    for noise in NOISE:
        assert noise not in out, noise
    assert "GPU available" in out and "`Trainer.fit` stopped: `max_steps=2` reached." in out  # the user's business
    # progress bar: steps of max_steps, the epoch by name, never Lightning's "Epoch 0/-2"
    bar = [line for line in out.replace("\r", "\n").splitlines() if "steps:" in line]
    assert bar and " 2/2 " in bar[-1] and bar[-1].startswith("Epoch 0, batch 2"), bar[-1:]
    assert "/-2" not in out and "v_num" not in out
    # held-out pass after the last step, though val_check_interval (50) is longer than the run
    assert "[anyalign] held-out reward accuracy: " in out and " on 8 pairs at step 2 (" in out, out[-2000:]


def test_missing_shard_is_one_line_naming_it_and_its_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = fails(["fit", "--config", CONFIG, "--data.train_shards", "assets/data/image/nope-{000..001}.tar"], capsys)
    assert len(err) == 1, err
    assert err[0].startswith("error: data.train_shards: shard not found: assets/data/image/nope-000.tar")
    assert str(tmp_path) in err[0] and str(ROOT) in err[0]  # where it looked


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    """``assets/tiny-sigli``: its first part is a folder next to the config, so it is a typo, not a hub id (before:
    a 15-line jsonargparse 'Union subtypes' error about the network)."""
    monkeypatch.chdir(tmp_path)
    err = fails(["fit", "--config", CONFIG, "--model.adapters.image.init_args.encoder", "assets/tiny-sigli"], capsys)
    assert len(err) == 1 and err[0].startswith("error: model.adapters.image.init_args.encoder: assets/tiny-sigli "
                                               "not found"), err


def test_unknown_hub_id_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = fails(["fit", "--config", CONFIG, "--model.lm", "nosuchorg/no-such-model"], capsys)
    assert len(err) == 1 and err[0].startswith("error: model.lm: 'nosuchorg/no-such-model' is not a local path"), err


def test_a_path_relative_to_the_current_directory_wins(tmp_path, monkeypatch):
    """The rule only fills in what the current directory lacks."""
    from anyalign.cli import resolve_relative_paths, search_dirs
    from jsonargparse import Namespace
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets" / "tiny-lm").mkdir(parents=True)
    cfg = Namespace(model=Namespace(lm="assets/tiny-lm", chat_template="{{ x }}",
                                    adapters={"image": Namespace(class_path="x", init_args=Namespace(
                                        encoder="assets/tiny-siglip"))}),
                    data=Namespace(train_shards=["assets/data/image/train-{000..001}.tar"], val_shards=None))
    unresolved = resolve_relative_paths(cfg, search_dirs([CONFIG]))
    assert cfg.model.lm == "assets/tiny-lm"  # exists here
    assert cfg.model.adapters["image"].init_args.encoder == str(ROOT / "assets/tiny-siglip")
    assert cfg.data.train_shards == [str(ROOT / "assets/data/image/train-{000..001}.tar")]
    assert cfg.model.chat_template == "{{ x }}" and unresolved == {}
    assert search_dirs([CONFIG]) == [ROOT / "configs", ROOT]  # up to the project root (pyproject.toml), no further


# ---- misspelt keys ----

@pytest.mark.parametrize("where", ["flag", "config"])
def test_misspelt_key_names_the_closest(where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    if where == "flag":
        args = ["--model.lossses", "[]", "--data.bach_size", "2"]
    else:
        bad = tmp_path / "bad.yaml"
        bad.write_text("model:\n  lossses: []\n")
        args = ["--config", str(bad)]
    err = fails(["fit", "--config", CONFIG, *args], capsys)
    assert err[0] == "error: unknown key model.lossses (did you mean model.losses?)"
    assert err[1:] == (["error: unknown key data.bach_size (did you mean data.batch_size or data.val_batch_size?)"]
                       if where == "flag" else [])


def test_misspelt_trainer_key_in_dotted_form(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainr.max_steps: 3\n")
    err = fails(["fit", "--config", CONFIG, "--config", str(bad)], capsys)
    assert len(err) == 1 and err[0].startswith("error: unknown key trainr.max_steps (did you mean trainer.max_steps")


def test_misspelt_adapter_argument_names_the_closest(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    err = fails(["fit", "--config", CONFIG, "--model.adapters.image.init_args.encodr", "x"], capsys)
    assert err == ["error: unknown key encodr of modalities.ImageAdapter in model.adapters (did you mean encoder?)"]


def test_other_parse_errors_skip_the_usage_dump(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    err = fails(["fit", "--config", CONFIG, "--data.batch_size", "many"], capsys)
    assert err[0] == 'error: Parser key "data.batch_size":' and len(err) <= 4, err
    assert not any(line.lstrip().startswith(("usage:", "[--")) for line in err)


def test_our_subcommands_fail_in_one_line_too(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    err = fails(["evaluate", "--config", CONFIG, "--data.val_shards", "nowhere-000.tar"], capsys)
    assert len(err) == 1 and err[0].startswith("error: data.val_shards: shard not found: nowhere-000.tar"), err


# ---- --help ----

def test_help_lists_anyalign_options_first(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    lines = capsys.readouterr().out.splitlines()

    def line_of(option):
        return next(i for i, line in enumerate(lines) if line.lstrip().startswith(option + " "))
    assert lines[0].startswith("usage: python -m anyalign fit [--config CONFIG]") and not lines[1].strip()
    assert line_of("--model.lm") < 40, line_of("--model.lm")
    assert line_of("--model.lm") < line_of("--model.losses") < line_of("--data.train_shards") < line_of("--trainer.max_steps")
    assert "--model.lm, --model.adapters, --model.losses" in " ".join(lines[:12])  # the main keys, named up front


# ---- library notices, one by one ----

def test_quiet_libraries_drops_notices_and_keeps_the_rest():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    quiet_libraries()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "transformers.modeling_utils")]
    levels = [lg.level for lg in loggers]
    handler = Keep()
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        rank_zero_info("💡 Tip: For seamless cloud logging ...")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("GPU available: False, used: False")
        loggers[1].warning("The new embeddings will be initialized from a multivariate normal distribution ...")
        loggers[1].warning("Some weights of X were not initialized")
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
    assert seen == ["GPU available: False, used: False", "Some weights of X were not initialized"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # re-install its filters over "default"
        warnings.warn("Found 32 module(s) in eval mode at the start of training. This may ...", UserWarning)
        warnings.warn("a warning of the user's own", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning of the user's own"]


def test_ctrl_c_in_a_finalizer_prints_no_traceback(monkeypatch):
    """decord's VideoReader.__del__ interrupted by Ctrl-C in a data worker printed 'Exception ignored in ...'
    with a traceback; other finalizer errors still reach the hook (and print)."""
    reached = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reached.append(u.exc_type.__name__))
    quiet_libraries()

    class Interrupted:
        def __del__(self):
            raise KeyboardInterrupt

    class Broken:
        def __del__(self):
            raise RuntimeError("a real bug")
    Interrupted()
    Broken()
    assert reached == ["RuntimeError"]


# ---- the end-of-fit summary ----

def test_summary_says_what_it_counts():
    from anyalign.callbacks import held_out_summary
    before = {"step": 0, "sanity": True, "accuracy": 0.0, "ties": 64, "pairs": 64}
    after = {"step": 150, "sanity": False, "accuracy": 0.75, "ties": 2, "pairs": 64}
    (line,) = held_out_summary([before, after])
    assert line == ("[anyalign] held-out reward accuracy: 0.750 on 64 pairs at step 150 (2 of them tie; a tie is "
                    "counted as not right); 0.000 at step 0, where 64 pairs tie: policy = reference")
    line, how = held_out_summary([{**before, "pairs": 128, "ties": 128}, {**after, "pairs": 128, "ties": 0}],
                                 unpaired=True)
    assert line.startswith("[anyalign] held-out reward accuracy (per sample, unpaired): 0.750 on 128 samples at step "
                           "150 (no ties; a tie is counted as not right)")
    assert "pairs" not in line and "128 samples tie" in line
    assert "> 0 for a desirable completion and < 0 for an undesirable one" in how
    (only,) = held_out_summary([after])
    assert only.endswith("(2 of them tie; a tie is counted as not right)")
