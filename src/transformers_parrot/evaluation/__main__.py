"""``python -m transformers_parrot.evaluation``: the ``parrot-eval`` command (also under torchrun/accelerate launch)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
