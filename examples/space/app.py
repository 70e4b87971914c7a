"""Hugging Face Space: `parrot-chat` for a published Parrot checkpoint.

The Space runs `python app.py`. `PARROT_MODEL` (a Space variable) names the checkpoint, default
`AIDC-AI/Parrot-7B`. A repo in the original LLaVA-style format (as `AIDC-AI/Parrot-7B` / `-14B` are published) is
converted once with parrot-convert into `$PARROT_CACHE` (default: the Space's persistent `/data` when mounted,
else `./converted`); a repo saved by this package (`model_type: parrot`) is loaded as it is. Locally:

    PARROT_MODEL=parrot-demo-output/model python examples/space/app.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from transformers_parrot.cli_utils import InputError, check_model, check_output_folder, first_input_error

DEFAULT_MODEL = "AIDC-AI/Parrot-7B"


def check_settings(model: str, cache: str | None) -> None:
    """`PARROT_MODEL` (a model folder or a well-formed Hub id) and `PARROT_CACHE` (a folder it can write) checked
    before anything is downloaded or loaded; InputError ``NAME VALUE: problem`` otherwise."""
    problem = first_input_error(
        {"PARROT_MODEL": model, "PARROT_CACHE": cache},
        {"PARROT_MODEL": check_model, "PARROT_CACHE": check_output_folder},
    )
    if problem:
        raise InputError(problem)


def _config(model: str) -> dict:
    if os.path.isdir(model):
        path = os.path.join(model, "config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_folder(model: str, cache: str) -> str:
    """A folder or repo id this package loads: `model` itself when it is transformers-native, else its conversion
    (written to a temporary folder and renamed when complete, so an interrupted start converts again)."""
    if _config(model).get("model_type") == "parrot":
        return model
    from transformers_parrot.conversion import main as convert

    output = os.path.join(cache, model.strip("/").replace("/", "--") + "-hf")
    if not os.path.isfile(os.path.join(output, "config.json")):
        partial = output + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        if convert(["--input", model, "--output", partial, "--dtype", "bfloat16"]) != 0:
            raise SystemExit(f"converting {model} failed (see the log above)")
        os.replace(partial, output)
    return output


def build(model: str | None = None):
    """The chat app (`transformers_parrot.chat.app.ChatApp`) for `model` (default: `PARROT_MODEL`)."""
    model = model or os.environ.get("PARROT_MODEL", DEFAULT_MODEL)
    check_settings(model, os.environ.get("PARROT_CACHE") or None)
    cache = os.environ.get("PARROT_CACHE") or ("/data" if os.path.isdir("/data") else "converted")

    import torch

    from transformers_parrot.chat.app import ChatApp
    from transformers_parrot.chat.backend import LocalBackend

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    backend = LocalBackend.from_pretrained(model_folder(model, cache), dtype=dtype, device="auto")
    backend.name = model
    return ChatApp(
        backend, notice=f"Checkpoint: [{model}](https://huggingface.co/{model})" if not os.path.isdir(model) else None
    )


def main() -> int:
    port = os.environ.get("PORT", "7860")
    try:
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise InputError(f"PORT {port}: not a port number (1-65535)")
        app = build()
    except InputError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    app.launch(host="0.0.0.0", port=int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
