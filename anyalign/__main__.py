"""``python -m anyalign``: see ``anyalign/cli.py``. Subcommands that are not Lightning's (convert, inspect,
predict, precompute, evaluate) are dispatched here before Lightning is imported, so e.g. the converter
starts without it."""
import importlib
import sys


def main() -> None:
    from .commands import COMMANDS
    argv = sys.argv[1:]
    if argv[:1] and argv[0] in COMMANDS:
        status = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        sys.exit(status or 0)
    from .cli import main as cli_main
    cli_main()


if __name__ == "__main__":
    main()
