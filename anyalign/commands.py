"""The subcommands of ``python -m anyalign`` that are not LightningCLI's: name -> module with ``main(argv)``."""
COMMANDS = {"precompute": "anyalign.precompute", "inspect": "anyalign.inspector", "convert": "anyalign.convert.cli",
            "predict": "anyalign.predict", "evaluate": "anyalign.evaluate"}
