"""Tiny random checkpoints of the multimodal families transformers ships, built locally for tests.

    python tools/tiny_families.py FAMILY OUT_DIR      # one family
    python tools/tiny_families.py --all OUT_ROOT      # every family, each in OUT_ROOT/FAMILY
    python tools/tiny_families.py --list              # the family names

``build(family, out_dir) -> Path`` writes a directory that the family's model class and ``AutoProcessor`` load with no
missing or unexpected keys: the family's real config and processor classes at tiny sizes, random weights (seed 0),
a tokenizer built from ``assets/tiny-lm/tokenizer.json`` plus the family's special tokens, and a chat template in
the family's style. Nothing is downloaded. ``FAMILIES`` says how to drive each family; ``placeholder_counts`` and
``feature_counts`` check a processor's output against the model's feature functions.

Modules: ``tokens`` (tokenizer, chat templates), ``saving`` (model and processor files), ``builders`` (one builder
per family), ``features`` (placeholder and feature counts). What each family is and does, measured (classes,
placeholder ids, feature functions, positions, attention, processor quirks): docs/families.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .builders import BUILDERS
from .features import feature_counts, placeholder_counts
from .saving import SEED

__all__ = ["BUILDERS", "FAMILIES", "Family", "build", "dir_size", "feature_counts", "main", "missing_requirements",
           "placeholder_counts"]


# ----------------------------------------------------------------------------------------------------------------------
# Family metadata: what a test (or the next engineer) needs to drive each family.

@dataclass(frozen=True)
class Family:
    name: str
    model_class: str                 # transformers class the directory is saved from
    auto_class: str                  # the AutoModelFor... class that loads it (AutoModelForMultimodalLM loads all nine)
    processor_class: str             # what AutoProcessor returns
    modalities: tuple[str, ...]      # what the sample conversation carries
    requires: tuple[str, ...] = ()   # importable modules the *processor* needs beyond this project's dependencies
    notes: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llava", "LlavaForConditionalGeneration", "AutoModelForImageTextToText", "LlavaProcessor", ("image",)),
    Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "AutoModelForImageTextToText", "Qwen2VLProcessor",
           ("image", "video"),
           requires=("torchvision",)),
    Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "AutoModelForImageTextToText", "Qwen2_5_VLProcessor",
           ("image", "video"),
           requires=("torchvision",)),
    Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", "AutoModelForImageTextToText",
           "LlavaOnevisionProcessor", ("image", "video"), requires=("torchvision",)),
    Family("idefics3", "Idefics3ForConditionalGeneration", "AutoModelForImageTextToText", "Idefics3Processor",
           ("image",)),
    Family("smolvlm", "SmolVLMForConditionalGeneration", "AutoModelForImageTextToText", "SmolVLMProcessor",
           ("image", "video"),
           requires=("torchvision", "num2words")),
    Family("gemma3", "Gemma3ForConditionalGeneration", "AutoModelForImageTextToText", "Gemma3Processor", ("image",)),
    Family("qwen2_audio", "Qwen2AudioForConditionalGeneration", "AutoModelForMultimodalLM", "Qwen2AudioProcessor",
           ("audio",)),
    Family("qwen2_5_omni_thinker", "Qwen2_5OmniThinkerForConditionalGeneration", "AutoModelForImageTextToText",
           "Qwen2_5OmniProcessor", ("image", "video", "audio"),
           requires=("torchvision",)),
]}


def missing_requirements(family: str) -> list[str]:
    """Modules the family's processor needs that are not importable here (the model itself never needs them)."""
    return [m for m in FAMILIES[family].requires if importlib.util.find_spec(m) is None]


assert BUILDERS.keys() == FAMILIES.keys()


MARKER = "tiny_family.json"  # written into every built directory; only such a directory is ever emptied


def build(family: str, out_dir) -> Path:
    """Write the tiny ``family`` checkpoint + processor into ``out_dir`` and return its path.

    ``out_dir`` must be missing, empty, or an earlier build (it has ``tiny_family.json``), which is replaced."""
    if family not in BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(BUILDERS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} is not empty and not an earlier tiny_families build; not touching it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        BUILDERS[family](out)
    finally:
        transformers.logging.set_verbosity(verbosity)
    (out / MARKER).write_text(json.dumps({"family": family, "seed": SEED, "transformers": transformers.__version__,
                                          "built_by": "tools/tiny_families.py"}, indent=2) + "\n")
    return out


def dir_size(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", nargs="?", help=f"one of: {', '.join(BUILDERS)}")
    ap.add_argument("out", nargs="?", help="output directory")
    ap.add_argument("--all", metavar="OUT_ROOT", help="build every family into OUT_ROOT/FAMILY")
    ap.add_argument("--list", action="store_true", help="print the family names")
    args = ap.parse_args(argv)
    import transformers
    transformers.utils.logging.disable_progress_bar()
    if args.list:
        print("\n".join(BUILDERS))
        return 0
    if args.all:
        jobs = [(f, Path(args.all) / f) for f in BUILDERS]
    elif args.family and args.out:
        jobs = [(args.family, Path(args.out))]
    else:
        ap.error("give FAMILY OUT_DIR, or --all OUT_ROOT")
    failed = 0
    for family, out in jobs:
        t0 = time.perf_counter()
        try:
            build(family, out)
        except Exception as e:  # noqa: BLE001 - report and go on with the other families
            failed += 1
            print(f"{family}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
            continue
        missing = missing_requirements(family)
        note = f"  (processor needs {', '.join(missing)} to load)" if missing else ""
        print(f"{family}: {out}  {time.perf_counter() - t0:.2f} s  {dir_size(out) / 1024:.0f} KiB{note}")
    return 1 if failed else 0

