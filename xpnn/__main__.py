"""`python -m xpnn ...` is the `xpnn` command (for an environment whose scripts are not on PATH)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
