"""One module per `rynn-edge` subcommand (see runtime/cli.py)."""
