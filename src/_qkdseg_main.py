"""The ``qkdseg`` console script: Ctrl-C while the package is still being imported gives the CLI's one line.

Importing :mod:`qkdseg` (numpy, networkx, pandas, ...) takes about a second,
before :mod:`qkdseg.cli` can install its SIGINT handler; a Ctrl-C in that
second would print Python's traceback. This module is outside the package
so that the console script imports nothing else first.
"""

import os
import sys


def main() -> None:
    try:
        from qkdseg.cli import main as cli_main
    except KeyboardInterrupt:
        os.write(2, b"qkdseg: error: interrupted\n")
        sys.exit(130)
    cli_main()
