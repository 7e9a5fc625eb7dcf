"""`python -m rynn_edge.runtime.sim ...` = `rynn-edge sim ...` without loading the other commands."""

from __future__ import annotations

import sys

from rynn_edge.runtime.argtypes import ArgumentParser
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.sim import cli as sim


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="rynn-edge sim", description=__doc__)
    sim.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return sim.run(args)
    except UserError as err:
        print(f"rynn-edge sim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
