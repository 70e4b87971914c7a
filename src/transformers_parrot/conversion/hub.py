"""Hub access of the converter: the input checkpoint as a local folder or a Hub repo, and ``--push_to_hub``.

Every failure becomes one clear message: a path that looks local and does not exist is a missing local folder (never
"an invalid repo id"), a repo that cannot be downloaded says why (offline, not found, network), and publishing is
checked (repo id, token, write access, namespace) before any conversion work starts.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers.utils import logging

from .errors import ConversionError, PublishError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.get_logger(__name__)

# Files fetched for a Hub input: configs, tokenizer, card; never Python files.
METADATA_PATTERNS = ["*.json", "*.txt", "*.md", "*.jinja", "*.model", "*.tiktoken"]


def looks_local(name: str) -> bool:
    """Whether ``name`` can only be a local path, not a Hub repo id (``org/name`` or ``name``)."""
    text = str(name)
    return text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1


def _missing_folder(name: str, what: str) -> str:
    path = Path(str(name)).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    message = f"{what} {name}: no such local folder"
    if parent.is_dir():
        close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir() if p.is_dir()], n=1)
        if close:
            message += f" (did you mean {parent / close[0]}?)"
    return message


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_checkpoint(
    name_or_path: str | os.PathLike, *, weights: bool = True, revision: str | None = None, what: str = "--input"
) -> Path:
    """A local folder as is; otherwise a Hub repo id fetched with ``snapshot_download`` (safetensors preferred,
    pickled ``.bin`` only when the repo has no safetensors; never Python files). Raises ConversionError."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{what} {path} is a file; pass the checkpoint folder")
    if looks_local(name):
        raise ConversionError(_missing_folder(name, what))
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConversionError(_missing_folder(name, what) + " (and not a Hub repo id)") from None
    patterns = list(METADATA_PATTERNS)
    offline = hub_offline()
    try:
        if weights and offline:  # only the local cache can answer: take whichever format it holds
            patterns += ["*.safetensors", "*.bin"]
        elif weights:
            files = HfApi().list_repo_files(name, revision=revision)
            patterns.append("*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin")
        logger.info("downloading %s (%s)", name, ", ".join(patterns))
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - the Hub client's errors differ between huggingface_hub releases
        reason = (
            "the Hub is offline (HF_HUB_OFFLINE=1) and the repo is not in the local cache"
            if offline
            else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )
        raise ConversionError(
            f"{_missing_folder(name, what)}, and Hub repo {name!r} could not be downloaded: {reason}"
        ) from err


@dataclass
class PushTarget:
    """A Hub repo checked for publishing: its id and the API client holding the checked token."""

    repo_id: str
    api: HfApi


def check_push_target(repo_id: str) -> PushTarget:
    """Check ``--push_to_hub`` before any work: a valid repo id, a token the Hub accepts, write access, and a
    namespace the token may create repos in. Raises PublishError (network=True when the Hub cannot be reached)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PublishError(f"--push_to_hub {repo_id!r} is not a valid Hub repo id ({err})") from None
    if hub_offline():
        raise PublishError("--push_to_hub needs the Hub, but HF_HUB_OFFLINE=1 is set")
    token = get_token()
    if not token:
        raise PublishError("--push_to_hub needs a Hub token with write access: run `hf auth login` (or set HF_TOKEN)")
    api = HfApi(token=token)
    try:
        info = api.whoami()
    except Exception as err:  # noqa: BLE001 - the Hub client's errors differ between huggingface_hub releases
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise PublishError(f"the Hub rejected the token (HTTP {status}): run `hf auth login` again") from None
        raise PublishError(
            f"cannot reach the Hub to check the token: {type(err).__name__}: {err}", network=True
        ) from err
    user = info.get("name")
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(
            f"the Hub token of {user} is read-only: --push_to_hub needs a write token "
            "(`hf auth login` with a token that has the write role)"
        )
    namespace = repo_id.split("/", 1)[0] if "/" in repo_id else user
    allowed = {user} | {org.get("name") for org in info.get("orgs") or []}
    if namespace not in allowed:
        raise PublishError(
            f"--push_to_hub {repo_id}: {user} cannot create repos under {namespace!r} (allowed: "
            f"{', '.join(sorted(n for n in allowed if n))})"
        )
    return PushTarget(repo_id, api)


def push_folder(target: PushTarget, folder: Path, *, private: bool, commit_message: str) -> str:
    """Create the repo (if needed) and upload ``folder``; returns the repo URL. Raises PublishError(network=True)."""
    try:
        target.api.create_repo(target.repo_id, private=private, exist_ok=True)
        target.api.upload_folder(folder_path=str(folder), repo_id=target.repo_id, commit_message=commit_message)
    except Exception as err:  # noqa: BLE001 - the Hub client's errors differ between huggingface_hub releases
        raise PublishError(
            f"uploading {folder} to {target.repo_id} failed: {type(err).__name__}: {err}. The "
            f"converted folder is complete; retry with `hf upload {target.repo_id} {folder}`",
            network=True,
        ) from err
    return f"https://huggingface.co/{target.repo_id}"
