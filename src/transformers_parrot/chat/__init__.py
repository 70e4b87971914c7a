"""`parrot-chat`: a web chat (Gradio) to try any Parrot checkpoint, with the routing of every answer's image.

    parrot-chat --model PATH_OR_ID        # pip install "transformers-parrot[chat]"
    parrot-chat --server http://localhost:8000

The backends (`transformers_parrot.chat.backend`) need no Gradio; the page is `transformers_parrot.chat.app`.
"""

from .backend import ChatInputError, LocalBackend, Reply, ServerBackend, Settings, Turn

__all__ = ["ChatInputError", "LocalBackend", "Reply", "ServerBackend", "Settings", "Turn"]
