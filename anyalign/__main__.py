"""``python -m anyalign``: anyalign's own subcommands (``commands.py``) without importing Lightning, the rest
through LightningCLI (``cli.py``)."""
import sys

from .commands import run_command


def main(args=None) -> None:
    if not run_command(sys.argv[1:] if args is None else list(args)):
        from .cli import main as cli_main
        cli_main(args)


if __name__ == "__main__":
    main()
