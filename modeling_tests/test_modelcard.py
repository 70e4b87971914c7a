"""The model card's quantized-loading snippet, documentation link and tested version ranges: the ranges are those
pyproject.toml declares (read from the installed metadata, never a second copy), the link is pyproject's
Documentation URL, and the snippet's code runs (4-bit through a plain BitsAndBytesConfig on a tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from transformers_parrot.modelcard import (
    TESTED_PACKAGES,
    build_model_card,
    documentation_url,
    quantized_snippet,
    tested_versions,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))


def _declared(name: str, extra: str | None) -> SpecifierSet:
    project = PYPROJECT["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    (spec,) = [Requirement(line).specifier for line in lines if Requirement(line).name == name]
    return spec


def test_card_states_the_ranges_pyproject_declares():
    ranges = tested_versions()
    assert set(ranges) == {name for name, _ in TESTED_PACKAGES}
    for name, extra in TESTED_PACKAGES:
        assert SpecifierSet(ranges[name]) == _declared(name, extra), name
    text = str(build_model_card(model_name="m"))
    for name, spec in ranges.items():
        assert f"{name}" in text and f"`{spec}`" in text, name
    assert "5.x, or 4.57" not in text  # the fallback wording is only for an uninstalled package


def test_card_links_the_quantization_docs():
    docs = PYPROJECT["project"]["urls"]["Documentation"].rstrip("/")
    assert documentation_url("quantization.md") == f"{docs}/quantization.md"
    assert (Path(__file__).resolve().parents[1] / "docs" / "quantization.md").is_file()
    card = str(build_model_card(model_name="m", repo_id="me/m"))
    assert f"]({docs}/quantization.md)" in card


def test_quantized_snippet_names_what_stays_unquantized():
    snippet = quantized_snippet("me/m")
    for part in ("vision tower", "projector", "MoE"):
        assert part in snippet
    assert "BitsAndBytesConfig(load_in_4bit=True" in snippet and "trust_remote_code=True" in snippet
    assert "trust_remote_code" not in quantized_snippet("me/m", trust_remote_code=False)


def test_quantized_snippet_runs(tmp_path):
    """The snippet's code, with the repo id replaced by a saved quantizable tiny Parrot, loads only the LLM in 4 bits."""
    pytest.importorskip("bitsandbytes")
    import torch
    from torch import nn

    from transformers_parrot.tiny import tiny_model

    model, _ = tiny_model(seed=0, quantizable=True)
    model.save_pretrained(tmp_path)
    (code,) = re.findall(r"```python\n(.*?)```", quantized_snippet(str(tmp_path), trust_remote_code=False), re.S)
    scope: dict = {}
    exec(code.replace('device_map="auto"', 'device_map="cpu"'), scope)  # noqa: S102  (our own snippet)
    loaded = scope["model"]
    kinds = {type(m).__name__ for n, m in loaded.named_modules() if isinstance(m, nn.Linear) and "language_model" in n}
    assert kinds == {"Linear4bit"}
    assert type(loaded.model.moe.gate).__name__ == "Linear" and loaded.model.moe.gate.weight.dtype == torch.bfloat16
