"""The ``qkdseg`` console script: Ctrl-C while the package is still being imported gives the CLI's one line.

Importing :mod:`qkdseg` (numpy, networkx, pandas, ...) and building the
commands take about a second before :mod:`qkdseg.cli` installs its SIGINT
handler; a Ctrl-C in that
second would print Python's traceback. This module is outside the package
so that the console script imports nothing else first.
"""

import os
import sys


def main() -> None:
    try:
        from qkdseg.cli import main as cli_main

        cli_main()  # from its group's main on, the CLI handles Ctrl-C itself (and exits with SystemExit)
    except KeyboardInterrupt:  # while importing, or while typer builds the commands
        os.write(2, b"qkdseg: error: interrupted\n")
        sys.exit(130)
