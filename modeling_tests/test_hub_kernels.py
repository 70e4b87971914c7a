"""Hub kernels (transformers 5.25+ turns `use_kernels` on by default): Parrot loads offline and without the `kernels`
package, an explicit `use_kernels=` is passed through unchanged, and the default is kept where kernels can load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from transformers_parrot.models.parrot import _compat
from transformers_parrot.models.parrot.modeling_parrot import ParrotForConditionalGeneration


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0)
    directory = tmp_path_factory.mktemp("parrot_kernels")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, model.eval()


def _kernels_state(monkeypatch, available: bool, offline: bool) -> None:
    from transformers.utils import hub, import_utils

    monkeypatch.setattr(_compat, "HUB_KERNELS_BY_DEFAULT", True)
    monkeypatch.setattr(import_utils, "is_kernels_available", lambda *args, **kwargs: available)
    monkeypatch.setattr(hub, "is_offline_mode", lambda: offline)


@pytest.mark.parametrize(("available", "offline"), [(False, False), (False, True), (True, True)])
def test_default_turns_kernels_off_where_they_cannot_load(monkeypatch, available, offline):
    _kernels_state(monkeypatch, available, offline)
    assert _compat.use_kernels_kwargs() == {"use_kernels": False}


def test_default_is_transformers_own_where_kernels_can_load(monkeypatch):
    _kernels_state(monkeypatch, available=True, offline=False)
    assert _compat.use_kernels_kwargs() == {}  # transformers' default: kernels on, unless USE_HUB_KERNELS=0


@pytest.mark.parametrize("value", [True, False])
def test_explicit_choice_is_passed_through(monkeypatch, value):
    _kernels_state(monkeypatch, available=False, offline=True)
    assert _compat.use_kernels_kwargs(value) == {"use_kernels": value}


def test_releases_before_5_25_get_no_keyword(monkeypatch):
    monkeypatch.setattr(_compat, "HUB_KERNELS_BY_DEFAULT", False)
    assert _compat.use_kernels_kwargs() == {}


@pytest.mark.compat
def test_loads_without_kernels_and_gives_the_same_logits(saved, monkeypatch):
    """On the installed transformers (5.25 with no compatible `kernels` here), with the variable that turns Hub
    kernels off unset: the Auto class and the class itself load, unkernelized, with the saved model's logits."""
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    directory, reference = saved
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        expected = reference(**inputs).logits
    for load in (AutoModelForImageTextToText.from_pretrained, ParrotForConditionalGeneration.from_pretrained):
        model = load(directory).eval()
        if _compat.use_kernels_kwargs() == {"use_kernels": False}:
            assert not model.use_kernels
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)


@pytest.mark.compat
def test_explicit_use_kernels_true_without_kernels_is_transformers_error(saved):
    """`use_kernels=True` must do what it says: without a compatible `kernels` package it fails, it is not dropped."""
    if _compat.use_kernels_kwargs() != {"use_kernels": False}:
        pytest.skip(
            "needs transformers 5.25+ where Hub kernels cannot load (no compatible `kernels` package, or offline)"
        )
    with pytest.raises(ValueError, match="Kernels are not available"):
        ParrotForConditionalGeneration.from_pretrained(saved[0], use_kernels=True)
