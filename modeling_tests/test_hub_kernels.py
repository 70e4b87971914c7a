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
    """On the installed transformers, with the variable that turns Hub kernels off unset: the Auto class and the
    class itself load (unkernelized where Hub kernels cannot load) with the saved model's logits."""
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


def _replaced_layers(model) -> list[str]:
    """Modules declaring a Hub kernel layer whose forward `kernelize` swapped for a kernel's (it binds the kernel
    layer's forward on the instance)."""
    return [
        name
        for name, module in model.named_modules()
        if hasattr(module, "kernel_layer_name") and "forward" in vars(module)
    ]


@pytest.mark.compat
def test_explicit_use_kernels_true_is_honoured(saved):
    """`use_kernels=True` must do what it says: with a compatible `kernels` package the model is kernelized (on CPU
    the default mapping has no kernel for any of Parrot's layers, so nothing is replaced and the logits are the
    saved model's, bit for bit); without one it fails with transformers' error instead of being dropped."""
    from transformers.utils.import_utils import is_kernels_available

    if not _compat.HUB_KERNELS_BY_DEFAULT:
        pytest.skip("Hub kernels by default start with transformers 5.25")
    directory, reference = saved
    if not is_kernels_available():
        with pytest.raises(ValueError, match="Kernels are not available"):
            ParrotForConditionalGeneration.from_pretrained(directory, use_kernels=True)
        return
    model = ParrotForConditionalGeneration.from_pretrained(directory, use_kernels=True).eval()
    assert model.use_kernels
    declared = {module.kernel_layer_name for module in model.modules() if hasattr(module, "kernel_layer_name")}
    assert {"RMSNorm", "SiLU", "QuickGELU", "GeLU"} <= declared  # the LLM's, CLIP's and the projector's layers
    if model.device.type == "cpu":
        assert _replaced_layers(model) == []
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)
