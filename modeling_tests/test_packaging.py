"""Release readiness: one source of the version, extras for every README section, and an sdist + wheel that
`twine check` accepts and that hold every module and data file. (.ci/run then installs that wheel alone into a
fresh venv and runs the Usage path, `parrot-eval`'s missing-extra error and `parrot-demo --quick`.)"""

from __future__ import annotations

import ast
import email
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import transformers_parrot

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "transformers_parrot"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSOLE_SCRIPTS = {"parrot-convert", "parrot-eval", "parrot-demo", "parrot-chat"}


def test_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "transformers_parrot.__version__"}
    # setuptools reads the attribute statically: it must stay one plain string literal in __init__.py
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    literals = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert literals == [transformers_parrot.__version__]
    from packaging.version import Version

    assert str(Version(transformers_parrot.__version__)) == transformers_parrot.__version__  # PEP 440, normalised
    assert metadata.version("transformers-parrot") == transformers_parrot.__version__  # the installed metadata


def test_extras_cover_the_readme_sections():
    base = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "accelerate" in base  # device_map="auto" in the Usage snippet works on a base install
    assert (
        any(r.startswith("deepspeed") for r in extras["deepspeed"])
        and "transformers-parrot[train]" in extras["deepspeed"]
    )
    assert {"pandas>=2.0", "matplotlib>=3.8"} <= set(extras["eval"])  # what parrot-eval checks for
    from transformers_parrot.evaluation.cli import EXTRA_MODULES

    assert set(EXTRA_MODULES) <= {r.split(">")[0].split("=")[0] for r in extras["eval"]}
    readme = (REPO / "README.md").read_text()
    for extra in extras:  # the README's extras table names every extra
        assert f"| `{extra}` |" in readme, f"extra {extra!r} missing from the README's extras table"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist + wheel built from the checkout (no build isolation: setuptools comes from the dev extra)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_twine_accepts_the_distributions(dist):
    version = transformers_parrot.__version__
    files = sorted(p.name for p in dist.iterdir())
    assert files == [f"transformers_parrot-{version}-py3-none-any.whl", f"transformers_parrot-{version}.tar.gz"]
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.count("PASSED") == 2, done.stdout + done.stderr


def _source_files() -> set[str]:
    return {
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_wheel_holds_every_module_data_file_and_entry_point(dist):
    version = transformers_parrot.__version__
    with zipfile.ZipFile(dist / f"transformers_parrot-{version}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        info = f"transformers_parrot-{version}.dist-info"
        meta = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    missing = _source_files() - names
    assert not missing, f"files of src/transformers_parrot missing from the wheel: {sorted(missing)}"
    assert meta["Version"] == version and meta["Name"] == "transformers-parrot"
    assert meta["License-Expression"] == "Apache-2.0" and f"{info}/licenses/LICENSE" in names
    assert set(meta.get_all("Provides-Extra")) == set(PYPROJECT["project"]["optional-dependencies"])
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("accelerate") and "extra ==" not in r for r in requires)
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points
    assert set(PYPROJECT["project"]["scripts"]) == CONSOLE_SCRIPTS
    assert "[vllm.general_plugins]" in entry_points
    assert meta.get_payload().lstrip().startswith("# transformers-parrot")  # the README is the long description


def test_sdist_rebuilds_the_package(dist):
    version = transformers_parrot.__version__
    with tarfile.open(dist / f"transformers_parrot-{version}.tar.gz") as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    needed = {"pyproject.toml", "README.md", "LICENSE"} | {f"src/{f}" for f in _source_files()}
    missing = needed - names
    assert not missing, f"missing from the sdist: {sorted(missing)}"
