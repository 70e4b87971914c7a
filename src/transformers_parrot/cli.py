"""Console-script entry points of transformers-parrot."""

from __future__ import annotations

import sys


def eval_main() -> None:
    """``parrot-eval``: see ``transformers_parrot.evaluation.cli``."""
    from .evaluation.cli import main

    sys.exit(main())


def convert_main() -> None:
    """``parrot-convert``: see ``transformers_parrot.conversion``."""
    from .conversion import main

    sys.exit(main())


def demo_main() -> None:
    """``parrot-demo``: see ``transformers_parrot.demo.run``."""
    from .demo.run import main

    sys.exit(main())


def chat_main() -> None:
    """``parrot-chat``: see ``transformers_parrot.chat.cli``."""
    from .chat.cli import main

    sys.exit(main())
