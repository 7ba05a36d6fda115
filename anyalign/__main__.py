"""``python -m anyalign``: see ``anyalign/cli.py``. Subcommands that are not Lightning's (convert, inspect,
predict, precompute, evaluate) are dispatched here before Lightning is imported, so e.g. the converter
starts without it."""
import importlib
import sys


def main(args=None) -> None:
    from .commands import COMMANDS
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] and argv[0] in COMMANDS:
        # sys.argv stays as it is: Lightning re-runs it to start the other DDP ranks of precompute
        status = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        if status:
            sys.exit(status)
        return
    from .cli import main as cli_main
    cli_main(args)


if __name__ == "__main__":
    main()
