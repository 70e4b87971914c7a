"""The converter's errors and the exit codes of ``parrot-convert`` (documented in docs/converting.md)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1  # --verify: the converted model does not reproduce the original computation
EXIT_INPUT_ERROR = 2  # bad input or argument (incl. --push_to_hub's repo id / token): nothing was written
EXIT_HUB_ERROR = 3  # the Hub failed while publishing (unreachable, or refused the upload)


class ConversionError(RuntimeError):
    """The input cannot be converted faithfully, or an argument is wrong (the message names the path, key or field)."""


class PublishError(RuntimeError):
    """``--push_to_hub`` cannot publish: ``network`` says whether the Hub failed (exit 3) rather than an argument
    or the credentials (exit 2)."""

    def __init__(self, message: str, *, network: bool = False):
        super().__init__(message)
        self.network = network
