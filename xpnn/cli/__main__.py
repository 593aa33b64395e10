"""`python -m xpnn.cli ...`: the `xpnn` command, as `python -m xpnn ...` is."""
import sys

from . import main

sys.exit(main())
