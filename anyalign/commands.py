"""The subcommands of ``python -m anyalign`` that are not LightningCLI's: name -> module with ``main(argv)``.
They are dispatched before Lightning is imported, so e.g. the converter starts without it."""
from __future__ import annotations

import importlib
import sys


class ConfigError(ValueError):
    """A configuration mistake that one line explains (a missing path, a misspelt key): the command line prints
    ``error: <message>`` and exits with status 2, without a traceback. Raised as a ValueError in Python."""


COMMANDS = {"precompute": "anyalign.precompute", "inspect": "anyalign.inspector", "convert": "anyalign.convert.cli",
            "predict": "anyalign.predict", "evaluate": "anyalign.evaluate",
            "bdhs": "anyalign.bdhs"}


def run_command(argv: list[str]) -> bool:
    """Run ``argv[0]`` if it is one of ours (exiting with its status when that is not 0); False otherwise.
    sys.argv is left as it is: Lightning re-runs it to start the other DDP ranks of precompute."""
    if not (argv[:1] and argv[0] in COMMANDS):
        return False
    try:
        status = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        status = 2
    if status:
        sys.exit(status)
    return True
