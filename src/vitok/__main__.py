"""`python -m vitok` is the `vitok` command."""

import sys

from .cli import main

sys.exit(main())
