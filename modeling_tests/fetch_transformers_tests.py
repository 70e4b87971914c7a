"""Fetch transformers' own common tests (ModelTesterMixin, ConfigTester, ProcessorTesterMixin) for the installed
version.

The wheel ships without tests, the sdist on PyPI ships `tests/test_modeling_common.py`,
`tests/test_configuration_common.py` and `tests/test_processing_common.py` but not the helper modules they import
(`tests/generation`, `tests/exporters`, `tests/utils`, `utils/fetch_hub_objects_for_ci.py`); those get minimal
stand-ins here (the generation and export mixins are not run: our own tests cover `generate`; the Hub fixture
images map to one local image, the Hub's videos and audio stay URLs). Usage:
`python modeling_tests/fetch_transformers_tests.py [DEST]` (default `.hf_tests/`);
`modeling_tests/test_transformers_common.py` and `test_processing_common.py` skip when the files are absent.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py", "tests/test_processing_common.py")
# stand-ins, by path relative to the suite folder (`hf_tests/` holds the test modules)
STUBS = {
    "hf_tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "hf_tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "hf_tests/utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
    "utils/fetch_hub_objects_for_ci.py": '''"""Offline stand-in: the Hub's fixture images map to one local RGB image."""
from pathlib import Path

import numpy as np
from PIL import Image

LOCAL_IMAGE = Path(__file__).with_name("fixture_image.png")


def url_to_local_path(url, return_url_if_not_found=True):
    if not url.endswith((".png", ".jpg", ".jpeg")):
        return url  # videos and audio: Parrot has no processor for them
    if not LOCAL_IMAGE.exists():
        pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(LOCAL_IMAGE)
    return str(LOCAL_IMAGE)
''',
}


def suite_dir(dest: Path) -> Path:
    """Folder holding the `hf_tests` package for the installed transformers version."""
    return dest / f"transformers-{transformers.__version__}"


def fetch(dest: Path) -> Path:
    target = suite_dir(dest)
    package = target / "hf_tests"
    if all((package / Path(f).name).exists() for f in FILES):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"transformers=={transformers.__version__}",
                "-d",
                tmp,
            ],
            check=True,
        )
        sdist = next(Path(tmp).glob("transformers-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            package.mkdir(parents=True, exist_ok=True)
            for member in archive.getmembers():
                for wanted in FILES:
                    if member.name.endswith("/" + wanted):
                        (package / Path(wanted).name).write_bytes(archive.extractfile(member).read())
    for relative, text in STUBS.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if relative.startswith("hf_tests/"):
            (path.parent / "__init__.py").touch()
    (package / "__init__.py").touch()
    return target


def use_suite_or_skip() -> Path:
    """For the test modules that run the suite: skip them on transformers 4.x (the suite is run on 5.x), fetch the
    suite (cached in `.hf_tests/`; offline and never fetched: skip, or fail under CI=true) and make `hf_tests`
    importable. Returns the suite's folder."""
    import os

    import pytest

    from transformers_parrot.models.parrot._compat import IS_TRANSFORMERS_4

    if IS_TRANSFORMERS_4:
        pytest.skip("the common suite is run on transformers 5.x", allow_module_level=True)
    try:  # needs PyPI once
        suite = fetch(Path(__file__).resolve().parents[1] / ".hf_tests")
    except Exception as error:  # offline and never fetched
        if os.environ.get("CI"):
            raise
        pytest.skip(f"transformers common tests unavailable (sdist not fetched: {error})", allow_module_level=True)
    sys.path.insert(0, str(suite))
    return suite


if __name__ == "__main__":
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / ".hf_tests"
    print(fetch(dest))
