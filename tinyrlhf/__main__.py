"""`python -m tinyrlhf` is the `tinyrlhf` command line."""

import sys

from .cli import main

sys.exit(main())
