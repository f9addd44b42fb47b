"""``python -m repl``: the interactive sandbox console (see :mod:`repl.console`)."""

import sys

from repl.console import main

if __name__ == "__main__":
    sys.exit(main())
