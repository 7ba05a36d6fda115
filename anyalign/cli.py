"""The command line: ``python -m anyalign {fit,validate,test,predict} --config X`` (LightningCLI with OmegaConf
interpolation), plus ``precompute`` (reference log-probs, ``anyalign/precompute.py``), ``inspect`` (look at
shards, ``anyalign/inspector.py``) and ``convert`` (other tools' datasets -> shards, ``anyalign/convert``).

What it adds to LightningCLI, for a user:

- one directory per run, ``<trainer.default_root_dir>/lightning_logs/version_N/``: CSV and TensorBoard logs,
  ``config.yaml``, ``checkpoints/``, ``curves.png`` and the export; ``<root>/checkpoints`` links to the latest
  run's checkpoints, and ``--ckpt_path last`` resumes the run with the newest ``last*.ckpt`` in its own directory;
- relative paths of a config (``model.lm``, adapters' ``encoder``, ``data.*_shards``, ...) that do not exist
  relative to the current directory are looked up next to the config file and in its parent directories up to
  the project root (the first with ``.git`` or ``pyproject.toml``), so ``--config /repo/configs/x.yaml`` runs
  from anywhere; a shard that is nowhere fails with one line naming it and its key;
- one-line errors: a misspelt key names the closest valid ones, without the usage dump;
- ``--help`` lists the model and data options before Lightning's Trainer options;
- library notices that are not the user's business are silenced (``quiet_libraries``);
- a progress bar in optimizer steps of ``trainer.max_steps``, and a held-out pass after the last step.
"""
from __future__ import annotations

import csv
import difflib
import importlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from modalities import load_entry_points

from .callbacks import RunDirCallback, StepProgressBar, ValidateAtEndCallback
from .checkpoint import (RUNS, SafetensorsCheckpointIO, checkpoint_step, last_checkpoints, next_version, run_dir,
                         run_version)
from .commands import ConfigError, run_command
from .data.module import PreferenceDataModule
from .module import AlignModule

PROG = "python -m anyalign"

# ---- library notices ----

#: warnings (by message) from libraries that nothing in an anyalign run can act on
NOT_THE_USERS = [
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",           # torch 2.14 vs Lightning's copy of pytree
    r"Found \d+ module\(s\) in eval mode at the start of training",   # frozen encoders stay in eval mode on purpose
    r"`is_gradient_checkpointing` is deprecated",                      # peft asking transformers 5 (LoRA)
    r"`gradient_checkpointing_enable` is deprecated",                  # model.gradient_checkpointing (transformers 5)
]
#: log records (by text) from Lightning and transformers, likewise
LOG_NOISE = (
    "💡 Tip:",                                 # Lightning advertising its cloud logger / model registry
    "TPU available:",                          # ("GPU available: ..., used: ..." stays: it says what runs where)
    "The new embeddings will be initialized",  # transformers, when anyalign adds its media tokens to the vocabulary
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(n in text for n in LOG_NOISE)


def _quiet_unraisable(hook):
    def quiet(unraisable) -> None:
        # Ctrl-C landing in a finalizer (decord's VideoReader.__del__ in a data worker), or decord's finalizers at
        # interpreter exit: tracebacks about the interruption itself, after the run has already been stopped
        if issubclass(unraisable.exc_type, KeyboardInterrupt) or \
                getattr(unraisable.object, "__module__", "").startswith("decord"):
            return
        hook(unraisable)
    quiet.anyalign = True
    return quiet


def quiet_libraries() -> None:
    """Silence the library notices of ``NOT_THE_USERS`` and ``LOG_NOISE`` for this process (and the data workers it
    forks). Everything else, e.g. Lightning's device line, its reason for stopping and every anyalign message, stays."""
    for pattern in NOT_THE_USERS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, _DropNoise) for f in target.filters):
                target.addFilter(_DropNoise())
    for name in ("lightning.pytorch.utilities.rank_zero", "transformers.modeling_utils"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    if not getattr(sys.unraisablehook, "anyalign", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


# ---- errors ----

def option_keys(parser) -> list[str]:
    """Every ``--key`` a parser takes, without the dashes."""
    return sorted({s[2:] for a in parser._actions for s in a.option_strings
                   if s.startswith("--") and not s.endswith("+") and s != "--help"})


def suggest(bad: str, keys: list[str], n: int = 3) -> list[str]:
    """The valid keys closest to ``bad`` (difflib's ratio at least 0.75, and within 0.15 of the closest), those of
    the same group (``model.``, ``data.``, ...) first."""
    group = bad.rpartition(".")[0]
    ranked = sorted(((difflib.SequenceMatcher(None, bad, k).ratio(), k.rpartition(".")[0] == group, k) for k in keys),
                    key=lambda t: (-t[1], -t[0]))
    best = max((r for r, _, _ in ranked), default=0.0)
    return [k for r, _, k in ranked if r >= 0.75 and r >= best - 0.15][:n]


def _class_keys(class_path: str) -> list[str]:
    """The init arguments a class takes, as jsonargparse reads them (base classes' ``**kwargs`` included)."""
    from jsonargparse import ArgumentParser
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
    except Exception:
        return []
    return option_keys(parser)


def unknown_key_lines(message: str, parser) -> list[str] | None:
    """One line per unknown key in a jsonargparse error message, naming the closest valid keys; None if the
    message is about something else."""
    bad: list[str] = []
    if message.startswith("unrecognized arguments:"):
        bad = [t[2:].split("=")[0].rstrip("+") for t in message.split(":", 1)[1].split() if t.startswith("--")]
    for pattern, prefix in ((r"Subcommand '[^']+' does not accept option '([^']+)'", ""),
                            (r"Group '([^']+)' does not accept option '([^']+)'", None),
                            (r"^Option '([^']+)' is not accepted( before subcommand .*)?$", "")):
        m = re.search(pattern, message, re.M)
        if m:
            bad.append(f"{m.group(1)}.{m.group(2)}" if prefix is None else m.group(1))
            break
    nested = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*Option '([^']+)' is not accepted", message)
    where = re.match(r'Parser key "([^"]+)"', message)
    if not bad and nested:
        class_path, key = nested.groups()
        close = suggest(key, _class_keys(class_path))
        return [f"error: unknown key {key} of {class_path}" + (f" in {where.group(1)}" if where else "") +
                (f" (did you mean {' or '.join(close)}?)" if close else f" (it takes {', '.join(_class_keys(class_path))})")]
    if not bad:
        return None
    keys = option_keys(parser)
    lines = []
    for key in bad:
        close = suggest(key, keys)
        lines.append(f"error: unknown key {key} (did you mean {' or '.join(close)}?)" if close else
                     f"error: unknown key {key} (`{parser.prog.replace(' [options]', '')} --help` lists the keys)")
    return lines


class AlignArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with errors in a line or a few: no 80-line usage dump, and a misspelt key names the
    closest valid ones (``error: unknown key model.lossses (did you mean model.losses?)``)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        if parser is self and self._subcommands_action is not None:  # the main parser: the subcommand's keys
            chosen = next((a for a in sys.argv[1:] if a in self._subcommands_action._name_parser_map), None)
            parser = self._subcommands_action._name_parser_map.get(chosen, parser)
        lines = unknown_key_lines(message, parser)
        if lines is None:
            prog = parser.prog.replace(" [options]", "")
            lines = [f"error: {message}", f"(`{prog} --help` lists the options)"]
        sys.stderr.write("\n".join(lines) + "\n")
        self.exit(2)


# ---- relative paths ----

#: keys of model.* and data.* (at any depth: adapters' init_args too) that name files or folders to read
PATH_KEYS = {"lm", "encoder", "chat_template", "reference_cache", "train_shards", "val_shards", "test_shards"}
SHARD_KEYS = {"train_shards", "val_shards", "test_shards"}
PROJECT_MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg")


def search_dirs(config_files) -> list[Path]:
    """Where a config's relative paths may be: each config file's directory and its parents, up to the first that
    holds a project marker (``.git``, ``pyproject.toml``, ...) or the file system root."""
    dirs: list[Path] = []
    for f in config_files or []:
        path = getattr(f, "absolute", None) or getattr(f, "abs_path", None) or str(f)
        d = Path(path).resolve().parent
        while True:
            dirs.append(d)
            if any((d / m).exists() for m in PROJECT_MARKERS) or d.parent == d:
                break
            d = d.parent
    return list(dict.fromkeys(dirs))


def _local(value: str) -> bool:
    return "://" not in value and not value.startswith("pipe:")


def _looks_local(value: str, dirs: list[Path]) -> bool:
    """A path that cannot be a Hugging Face hub id (``org/name`` or ``name``): ``./x``, ``../x``, ``~/x``, three or
    more parts, or two whose first is a folder here or next to the config (``assets/tiny-sigli``: a typo)."""
    parts = Path(value).parts
    if value.startswith((".", "~")) or len(parts) > 2:
        return True
    return len(parts) == 2 and any((d / parts[0]).is_dir() for d in [Path.cwd(), *dirs])


def _resolve_shards(value: str, key: str, dirs: list[Path]) -> str:
    import braceexpand
    urls = [u for u in braceexpand.braceexpand(value) if _local(u)]
    if all(Path(u).is_file() for u in urls):
        return value
    missing = next(u for u in urls if not Path(u).is_file())
    if not Path(value).is_absolute():
        for d in dirs:
            if all((d / u).is_file() for u in urls):
                return str(d / value)
    where = f" (relative to {os.getcwd()}" + (f", {', '.join(map(str, dirs))}" if dirs else "") + ")"
    raise ConfigError(f"{key}: shard not found: {missing}" + ("" if Path(missing).is_absolute() else where))


def resolve_relative_paths(cfg, dirs: list[Path]) -> dict[str, str]:
    """Rewrite, in place, the relative ``PATH_KEYS`` values of ``cfg.model`` and ``cfg.data`` that do not exist
    relative to the current directory but do under one of ``dirs`` (the first that has them). Shards that are
    nowhere raise ConfigError; other paths that are nowhere are left (they may be hub ids) and returned."""
    unresolved: dict[str, str] = {}

    def fix(value, key: str, name: str):
        if isinstance(value, list):
            return [fix(v, key, name) for v in value]
        if not isinstance(value, str) or not value or not _local(value):
            return value
        if name in SHARD_KEYS:
            return _resolve_shards(value, key, dirs)
        if Path(value).expanduser().is_absolute() or "{" in value or "\n" in value or Path(value).exists():
            return value
        for d in dirs:
            if (d / value).exists():
                return str(d / value)
        if _looks_local(value, dirs):
            looked = ", ".join(map(str, [os.getcwd(), *dirs]))
            raise ConfigError(f"{key}: {value} not found (looked relative to {looked}); not taken for a Hugging Face "
                              "hub id, as its first part is a local folder or it is not of the form org/name")
        unresolved[key] = value
        return value

    def walk(node, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else vars(node).items() if hasattr(node, "__dict__") else []
        for name, value in list(items):
            key = f"{prefix}.{name}"
            if name in PATH_KEYS and (isinstance(value, (str, list))):
                new = fix(value, key, name)
                if new is not value and new != value:
                    if isinstance(node, dict):
                        node[name] = new
                    else:
                        setattr(node, name, new)
            elif isinstance(value, dict) or hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
                walk(value, key)

    for section in ("model", "data"):
        if cfg.get(section) is not None:
            walk(cfg[section], section)
    return unresolved


def _first_error(message: str) -> str:
    """The first cause listed in a jsonargparse 'Union subtypes' error, or its first line."""
    causes = re.findall(r"^\s*- (.+)$", message, re.M)
    return (causes[0] if causes else message.splitlines()[0]).strip()


# ---- loggers that continue a resumed run ----

class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, appending to a run's metrics.csv (Lightning's deletes it when the folder has files)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class RunCSVLogger(CSVLogger):
    """CSVLogger for a run that may be resumed in its own directory: ``resume_step`` (the checkpoint's step) drops
    the rows the interrupted run logged from that step on, which the resumed run logs again, and the new rows are
    appended to the same metrics.csv, so one run's metrics stay in one file across a resume."""

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            metrics = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            if self.resume_step is not None and metrics.is_file():
                drop_rows_from(metrics, self.resume_step)
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_rows_from(metrics_csv: Path, step: int) -> None:
    """Remove the rows of ``metrics_csv`` logged at ``step`` or later."""
    with metrics_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    keep = [r for r in rows if not r.get("step") or float(r["step"]) < step]
    with metrics_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)


# ---- the CLI ----

MAIN_KEYS = ("--model.lm, --model.adapters, --model.losses, --model.negatives, --model.reference, --model.lora, "
             "--model.freeze, --model.media, --model.lr, --data.train_shards, --data.val_shards, --data.layout, "
             "--data.batch_size, --data.max_length, --trainer.max_steps, --trainer.val_check_interval, "
             "--trainer.default_root_dir")


GROUP_TITLES = {
    "model": "Model (--model.*): the LM, modality adapters, loss terms, negatives, reference model, LoRA, optimizer",
    "data": "Data (--data.*): preference shards, batches, sequence length, layout",
    "trainer": "Trainer (--trainer.*): Lightning's Trainer: steps, validation, devices, precision, logging",
}


class AlignCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parser_class", AlignArgumentParser)
        super().__init__(*args, **kwargs)

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Model and data first: ``--help`` shows anyalign's own options before ~450 lines of Trainer options."""
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        for key, title in GROUP_TITLES.items():
            if key in parser.groups:
                parser.groups[key].title = title

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("usage", f"{PROG} {subcommand} [--config CONFIG] [--model.KEY VALUE] [--data.KEY VALUE] "
                                   "[--trainer.KEY VALUE] ...")
        kwargs["description"] = (
            f"{kwargs.get('description') or ''}\n\nanyalign's options come first (--model.*: the model, losses, "
            "negatives, reference; --data.*: the shards and batches), then Lightning's Trainer options "
            f"(--trainer.*). The main keys: {MAIN_KEYS}. README.md, 'Options', has a table of them.")
        return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI would torch.load the checkpoint here to merge its hyper-parameters into the config.
        Checkpoints are safetensors files, and a resumed run takes its model from the config it is given
        (the same one it was started with), so there is nothing to merge."""

    def before_instantiate_classes(self) -> None:
        """Relative paths that are not under the current directory are looked up next to the config file."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self.search_dirs = search_dirs(cfg.get("config"))
        self.unresolved = resolve_relative_paths(cfg, self.search_dirs)

    def instantiate_classes(self) -> None:
        try:
            self.config_init = self.parser.instantiate_classes(self.config)
        except (ValueError, OSError) as e:
            raise self._explain(e) from e
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def _explain(self, e: Exception) -> Exception:
        """A ConfigError of one line for a path that is neither local nor on the hub (buried, by jsonargparse, in a
        'Union subtypes' error for an adapter's encoder); any other error as it was."""
        text = str(e)
        union = "Does not validate against any of the Union subtypes" in text
        if not (union or isinstance(e, OSError)):
            return e
        suspects = {k: v for k, v in self.unresolved.items()
                    if k.startswith("model.adapters.") and v in text} if union else \
            {k: v for k, v in self.unresolved.items() if k == "model.lm"}
        if not suspects and union:
            suspects = {k: v for k, v in self.unresolved.items() if k.startswith("model.adapters.")}
        if not suspects:
            return ConfigError(f"model.adapters: {_first_error(text)}") if union else e
        key, value = next(iter(suspects.items()))
        looked = ", ".join(map(str, [os.getcwd(), *self.search_dirs]))
        return ConfigError(f"{key}: {value!r} is not a local path (looked relative to {looked}) and could not be "
                           f"loaded as a Hugging Face hub id: {_first_error(text) if union else text.splitlines()[0]}")

    def instantiate_trainer(self, **kwargs):
        """Checkpoints in safetensors format unless the config names another CheckpointIO; loggers, checkpoints
        and run directory as the module docstring says; the progress bar and the held-out pass at the end."""
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = cfg.get("trainer") or {}
        plugins = trainer_cfg.get("plugins")
        plugins = list(plugins or []) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins else [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, SafetensorsCheckpointIO()]
        root = trainer_cfg.get("default_root_dir") or os.getcwd()
        fit = self.subcommand == "fit"
        resumed = self._resolve_last(cfg, root)
        version = run_version(resumed, root) if fit and resumed is not None else None  # continue that run
        resume_step = checkpoint_step(resumed) if version is not None else None
        # Loggers: CSV and TensorBoard in one <root>/lightning_logs/version_N/ unless trainer.logger is false or
        # names its own CSV/TensorBoard logger; other loggers (W&B: --trainer.logger+=...) come after the pair, so
        # trainer.log_dir (config.yaml, export, curves.png) stays that run directory. CSV first: trainer.log_dir
        # and Lightning's checkpoint folder follow the first logger.
        given = trainer_cfg.get("logger")
        given = [] if given is None or given is True else given if isinstance(given, (list, tuple, bool)) else [given]
        pair = given is not False and not any(isinstance(lg, (TensorBoardLogger, CSVLogger)) for lg in given)
        loggers = []
        if pair:
            version = next_version(root) if version is None else version
            tb_kwargs = {} if resume_step is None else {"purge_step": resume_step}  # TensorBoard hides the rest
            loggers = [RunCSVLogger(root, name=RUNS, version=version, resume_step=resume_step),
                       TensorBoardLogger(root, name=RUNS, version=version, **tb_kwargs)]
            kwargs["logger"] = [*loggers, *given]
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if fit:
            callbacks.append(ValidateAtEndCallback())
        if trainer_cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(StepProgressBar())
        if version is not None:
            callbacks.append(RunDirCallback(str(root), version, loggers, link=fit))
        kwargs["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None and version is not None:
                cb.dirpath = os.path.realpath(run_dir(root, version) / "checkpoints")
                cb._anyalign_run_dir = True
                if resume_step is not None:  # its own folder, on purpose
                    warnings.filterwarnings("ignore", message=re.escape(f"Checkpoint directory {cb.dirpath} exists"))
        link = Path(root) / "checkpoints"
        if fit and version is None and link.is_symlink():  # no run directory: Lightning's <root>/checkpoints/,
            try:                                            # never another run's folder through the link
                link.unlink()
            except FileNotFoundError:
                pass
        return trainer

    def _resolve_last(self, cfg, root) -> Path | None:
        """``--ckpt_path last``: the newest ``last*.ckpt`` of any run of this config (set in the config as a path).
        fit starts a new run when there is none (as Lightning does); validate and test fail."""
        if not self.subcommand or cfg.get("ckpt_path") != "last":
            return None
        found = last_checkpoints(root)
        if not found:
            if self.subcommand != "fit":
                raise ConfigError(f"--ckpt_path last: no last*.ckpt in {Path(root) / RUNS}/version_*/checkpoints or "
                                  f"{Path(root) / 'checkpoints'}: has this config been trained?")
            if rank_zero_only.rank == 0:
                print(f"[anyalign] --ckpt_path last: no checkpoint of this config in {root} yet: starting a new run",
                      file=sys.stderr)
            cfg.ckpt_path = None
            return None
        cfg.ckpt_path = str(found[-1])
        if rank_zero_only.rank == 0 and self.subcommand == "fit":
            print(f"[anyalign] resuming from {found[-1]}", file=sys.stderr)
        return found[-1]


def build_cli(args: list[str], run: bool = False, **parser_kwargs) -> AlignCLI:
    """The run a config describes, built as ``fit`` builds it (same seed, model, data and trainer), without
    running a subcommand: for ``precompute``, ``inspect``, the benchmark and tests."""
    load_entry_points()
    quiet_libraries()
    with warnings.catch_warnings():  # args are given on purpose, not read from sys.argv
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return AlignCLI(AlignModule, PreferenceDataModule, run=run, seed_everything_default=0,
                        parser_kwargs={"parser_mode": "omegaconf", **parser_kwargs}, save_config_callback=None,
                        args=args)


def main(args=None) -> None:
    if run_command(sys.argv[1:] if args is None else list(args)):
        return
    load_entry_points()  # installed packages' adapters become known by class name
    quiet_libraries()
    try:
        AlignCLI(
            AlignModule,
            PreferenceDataModule,
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "omegaconf", "prog": PROG},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
