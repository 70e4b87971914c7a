"""One flag style across parrot-eval and examples/quickstart.py (underscores as in transformers/TRL, the dashed
spelling as an alias), clear errors for a missing extra and a missing image."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from transformers_parrot.evaluation import cli as eval_cli

REPO = Path(__file__).resolve().parents[1]


def _quickstart():
    spec = importlib.util.spec_from_file_location("parrot_quickstart", REPO / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _long_flags(parser) -> list[list[str]]:
    return [[o for o in a.option_strings if o.startswith("--")] for a in parser._actions if a.option_strings]


@pytest.mark.parametrize(
    "build_parser", [eval_cli.build_parser, lambda: _quickstart().build_parser()], ids=["parrot-eval", "quickstart"]
)
def test_underscore_flags_with_dashed_aliases(build_parser):
    parser = build_parser()
    for flags in _long_flags(parser):
        canonical = flags[0]
        if canonical == "--help":
            continue
        assert "-" not in canonical[2:], f"{canonical}: flags are spelled with underscores"
        if "_" in canonical:
            assert "--" + canonical[2:].replace("_", "-") in flags, f"{canonical}: the dashed spelling is not accepted"


def test_parrot_eval_both_spellings_parse_the_same():
    common = ["--model", "m", "--benchmark", "mmmb", "--output", "o"]
    underscore = eval_cli.build_parser().parse_args(
        common
        + [
            "--data_dir",
            "d",
            "--batch_size",
            "3",
            "--max_new_tokens",
            "7",
            "--no_download",
            "--trust_remote_code",
            "--model_name",
            "n",
            "--no_circular",
            "--no_progress",
        ]
    )
    dashed = eval_cli.build_parser().parse_args(
        common
        + [
            "--data-dir",
            "d",
            "--batch-size",
            "3",
            "--max-new-tokens",
            "7",
            "--no-download",
            "--trust-remote-code",
            "--model-name",
            "n",
            "--no-circular",
            "--no-progress",
        ]
    )
    assert vars(underscore) == vars(dashed)
    assert (underscore.data_dir, underscore.batch_size, underscore.max_new_tokens, underscore.circular) == (
        "d",
        3,
        7,
        False,
    )


@pytest.mark.parametrize("module", ["pandas", "matplotlib"])
def test_parrot_eval_names_the_missing_extra(module, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError, as on a base install

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when an extra is missing")

    monkeypatch.setattr(eval_cli.runner, "load_predictor", no_model)
    rc = eval_cli.main(["--model", "m", "--benchmark", "mmmb", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{module} is not installed" in err and 'pip install "transformers-parrot[eval]"' in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_quickstart_missing_or_bad_image_is_a_clear_error(tmp_path, capsys):
    quickstart = _quickstart()
    for path, reason in [(tmp_path / "missing.jpg", "no such file"), (tmp_path / "notes.jpg", "not a readable image")]:
        if path.name == "notes.jpg":
            path.write_text("not an image")
        with pytest.raises(SystemExit) as exit_info:
            quickstart.main(["--image", str(path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert f"error: --image {path}: {reason}" in err and "Traceback" not in err


def test_quickstart_reads_a_good_image(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGBA", (12, 9), (10, 20, 30, 255)).save(path)
    image = _quickstart().load_image(str(path))
    assert image.mode == "RGB" and image.size == (12, 9) and image.getpixel((0, 0)) == (10, 20, 30)
