"""``python -m pvqref``: the command line of :mod:`pvqref.cli`."""

import sys

from pvqref.cli import main

if __name__ == "__main__":
    sys.exit(main())
