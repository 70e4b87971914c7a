"""``python -m transformers_parrot.conversion`` = ``parrot-convert``."""

import sys

from .cli import main

sys.exit(main())
