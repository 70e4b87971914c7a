"""Every command-line argument that names a model, a file, a folder or a dataset is checked before any work, in
every command: parrot-eval, parrot-convert, parrot-demo, parrot-chat, examples/quickstart.py, the three training
scripts and the Space app. Each such argument is given each kind of wrong value; the command must exit with code 2
and one `error:` line naming the argument and the problem, with no traceback, without loading a model (the loaders
are replaced by functions that fail the test) and without creating its output folder. In-process calls cover the
whole table; one real subprocess per command checks the exit code and stderr as a user sees them."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

# parrot-convert's good --input: test_conversion's tiny original checkpoint (fixtures: its tokenizer and CLIP tower)
from test_conversion import clip_dir, original_tokenizer, write_original  # noqa: F401

from transformers_parrot import cli_utils
from transformers_parrot.cli_utils import InputError

REPO = Path(__file__).resolve().parents[1]

# what the error line must say for each kind of wrong value
KINDS = {
    "missing": r"no such",
    "file": r"is a file",  # a file where a folder (or model folder) is needed
    "folder": r"is a folder",  # a folder where a file is needed
    "no_config": r"config\.json",  # a folder that is not a saved model
    "hub_slashes": r"valid Hub id|no such local folder",  # `a//b`: neither a path nor an id
    "hub_space": r"no such local folder",  # `../x y`: a relative path that does not exist
    "under_file": r"is a file",  # an output folder below a file
    "no_data": r"holds no data file",  # a dataset folder without data files
    "bad_suffix": r"unsupported file type",  # a data file the readers do not take
    "bad_url": r"not an http:// or https:// URL",  # a server address without scheme
}
MODEL_KINDS = ("missing", "file", "no_config", "hub_slashes", "hub_space")
OUTPUT_KINDS = ("file", "under_file")
FILE_KINDS = ("missing", "folder")
FOLDER_KINDS = ("missing", "file")
DATASET_KINDS = ("missing", "no_data", "bad_suffix", "hub_slashes")


def _never(*args, **kwargs):
    raise AssertionError("work started although an argument is wrong")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Good and wrong values on disk: a model folder, a TSV, a data file, an image, a YAML config; a file, an empty
    folder, a data file of an unsupported type."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "bench_en.tsv").write_text("index\tquestion\n")
    (root / "data.json").write_text("[]")
    (root / "data.tsv").write_text("a\tb\n")
    (root / "recipe.yaml").write_text("seed: 0\n")
    (root / "quant.json").write_text('{"quant_method": "bitsandbytes", "load_in_4bit": true}')
    (root / "images").mkdir()
    (root / "a-file.txt").write_text("not a folder")
    (root / "a-folder").mkdir()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(root / "image.png")
    return root


def wrong_value(kind: str, root: Path) -> str:
    return {
        "missing": str(root / "no-such-thing.json"),
        "file": str(root / "a-file.txt"),
        "folder": str(root / "a-folder"),
        "no_config": str(root / "a-folder"),
        "hub_slashes": "a//b",
        "hub_space": "../x y",
        "under_file": str(root / "a-file.txt" / "out"),
        "no_data": str(root / "a-folder"),
        "bad_suffix": str(root / "data.tsv"),
        "bad_url": "localhost:8000",
    }[kind]


def assert_input_error(code, err: str, label: str, kind: str) -> str:
    """Exit 2, exactly one `error:` line, naming `label` (the flag) and saying what is wrong; no traceback."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    line = lines[0]
    assert re.search(rf"error: {re.escape(label)}\b", line), line
    assert re.search(KINDS[kind], line), line
    return line


# ---------------------------------------------------------------------------------------------- the commands
@dataclass
class Command:
    """A command: its good arguments (flag -> value, from the `root` folder), which arguments to make wrong with
    which kinds, and how to run it in process (returns the exit code)."""

    name: str
    good: callable
    wrong: dict[str, tuple[str, ...]]
    output_flag: str | None = "output"
    env: bool = False  # the arguments are environment variables
    extra: list[str] = field(default_factory=list)


def _argv(values: dict) -> list[str]:
    argv = []
    for flag, value in values.items():
        if isinstance(value, list):
            argv += [f"--{flag}", *value]
        elif value is True:
            argv.append(f"--{flag}")
        elif value is not None:
            argv += [f"--{flag}", value]
    return argv


def run_eval(values, monkeypatch):
    from transformers_parrot.evaluation import cli

    monkeypatch.setattr(cli.runner, "load_predictor", _never)
    monkeypatch.setattr(cli.runner, "prepare_benchmark", _never)
    return cli.main(_argv(values))


def run_convert(values, monkeypatch):
    from transformers_parrot import conversion

    monkeypatch.setattr("transformers_parrot.conversion.cli.verify", _never)
    return conversion.main(_argv(values))


def run_demo(values, monkeypatch):
    from transformers_parrot.demo import run

    monkeypatch.setattr(run, "run_demo", _never)
    with pytest.raises(SystemExit) as exit_info:
        run.main(_argv(values))
    return exit_info.value.code


def run_chat(values, monkeypatch):
    from transformers_parrot.chat import backend, cli

    monkeypatch.setattr(backend.LocalBackend, "from_pretrained", _never)
    monkeypatch.setattr(backend.ServerBackend, "__init__", _never)
    return cli.main(_argv(values))


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quickstart(values, monkeypatch):
    quickstart = _load(REPO / "examples" / "quickstart.py", "inputs_quickstart")
    for name in ("AutoModelForImageTextToText", "AutoProcessor"):
        monkeypatch.setattr(quickstart, name, SimpleNamespace(from_pretrained=_never))
    for name in ("tiny_model", "pipeline"):
        monkeypatch.setattr(quickstart, name, _never)
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(_argv(values))
    return exit_info.value.code


def run_training(script: str):
    def run(values, monkeypatch):
        example = _load(REPO / "examples" / f"{script}.py", f"inputs_{script}")
        monkeypatch.setattr(example, "load_model_and_processor", _never)
        with pytest.raises(SystemExit) as exit_info:
            example.main(*example.make_parser().parse_args_and_config(_argv(values)))
        return exit_info.value.code

    return run


def run_space(values, monkeypatch):
    space = _load(REPO / "examples" / "space" / "app.py", "inputs_space")
    monkeypatch.setattr(space, "model_folder", _never)
    for name in ("PARROT_MODEL", "PARROT_CACHE", "PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    return space.main()


TRAINING_COMMON = {"report_to": "none", "use_cpu": "True", "bf16": "False"}


def _training_good(root: Path, datasets_flag: str = "datasets") -> dict:
    return {
        "model_name_or_path": str(root / "model"),
        datasets_flag: [str(root / "data.json")],
        "image_folders": [str(root / "images")],
        "output_dir": str(root / "never-train"),
        **TRAINING_COMMON,
    }


TRAINING_WRONG = {
    "model_name_or_path": MODEL_KINDS,
    "image_folders": FOLDER_KINDS,
    "output_dir": OUTPUT_KINDS,
    "resume_from_checkpoint": FOLDER_KINDS,
    "config": FILE_KINDS,
    "deepspeed": FILE_KINDS,
    "fsdp_config": FILE_KINDS,
}

COMMANDS = {
    "parrot-eval": Command(
        "parrot-eval",
        lambda r: {"model": str(r / "model"), "benchmark": str(r / "bench_en.tsv"), "output": str(r / "never-eval")},
        {
            "model": MODEL_KINDS,
            "benchmark": FILE_KINDS,
            "output": OUTPUT_KINDS,
            "data_dir": OUTPUT_KINDS,
            "quantization_config": FILE_KINDS,
        },
    ),
    "parrot-convert": Command(
        "parrot-convert",
        lambda r: {"input": str(r / "original"), "output": str(r / "never-convert")},
        {
            "input": MODEL_KINDS,
            "output": OUTPUT_KINDS,
            "vision_tower": MODEL_KINDS,
            "results": FILE_KINDS,
        },
    ),
    "parrot-demo": Command("parrot-demo", lambda r: {"output": str(r / "never-demo")}, {"output": OUTPUT_KINDS}),
    "parrot-chat": Command(
        "parrot-chat",
        lambda r: {"model": str(r / "model")},
        {"model": MODEL_KINDS, "quantization_config": FILE_KINDS, "server": ("bad_url",)},
        output_flag=None,
    ),
    "quickstart": Command(
        "quickstart",
        lambda r: {"model": str(r / "model"), "image": str(r / "image.png")},
        {"model": MODEL_KINDS, "image": FILE_KINDS, "quantization_config": FILE_KINDS},
        output_flag=None,
    ),
    "train_sft": Command(
        "train_sft",
        _training_good,
        {**TRAINING_WRONG, "datasets": DATASET_KINDS, "vision_model": MODEL_KINDS[:3], "llm_model": MODEL_KINDS[3:]},
        output_flag="output_dir",
    ),
    "train_mlan": Command(
        "train_mlan",
        lambda r: _training_good(r, "text_datasets"),
        {**TRAINING_WRONG, "text_datasets": DATASET_KINDS, "visual_datasets": DATASET_KINDS[:2]},
        output_flag="output_dir",
    ),
    "train_dpo": Command(
        "train_dpo",
        _training_good,
        {**TRAINING_WRONG, "datasets": DATASET_KINDS},
        output_flag="output_dir",
    ),
    "space": Command(
        "space",
        lambda r: {"PARROT_MODEL": str(r / "model"), "PARROT_CACHE": str(r / "never-space")},
        {"PARROT_MODEL": MODEL_KINDS, "PARROT_CACHE": OUTPUT_KINDS},
        output_flag="PARROT_CACHE",
        env=True,
    ),
}
RUNNERS = {
    "parrot-eval": run_eval,
    "parrot-convert": run_convert,
    "parrot-demo": run_demo,
    "parrot-chat": run_chat,
    "quickstart": run_quickstart,
    "train_sft": run_training("train_sft"),
    "train_mlan": run_training("train_mlan"),
    "train_dpo": run_training("train_dpo"),
    "space": run_space,
}
CASES = [
    pytest.param(command, flag, kind, id=f"{command}-{flag}-{kind}")
    for command, spec in COMMANDS.items()
    for flag, kinds in spec.wrong.items()
    for kind in kinds
]


@pytest.fixture(scope="module")
def original(root, original_tokenizer, clip_dir):  # noqa: F811
    """An original-format Parrot checkpoint (parrot-convert's good --input)."""
    return write_original(root / "original", original_tokenizer, clip_dir)


def _values(command: str, flag: str, kind: str, root: Path) -> dict:
    values = COMMANDS[command].good(root)
    bad = wrong_value(kind, root)
    if flag in ("vision_model", "llm_model"):  # a fresh build names both parts instead of a checkpoint
        values.pop("model_name_or_path")
        values.update(vision_model=str(root / "model"), llm_model=str(root / "model"))
    if flag == "server":  # --model and --server exclude each other
        values.pop("model")
    if flag == "visual_datasets":
        values["visual_ratio"] = "0.5"
    if flag == "data_dir":
        values["benchmark"] = "mmmb"
    values[flag] = [bad] if isinstance(values.get(flag), list) or flag.endswith("datasets") else bad
    return values


@pytest.mark.parametrize("command, flag, kind", CASES)
def test_wrong_argument_is_refused_before_any_work(command, flag, kind, root, monkeypatch, capsys, request):
    if command == "parrot-convert":
        request.getfixturevalue("original")
    if command.startswith("train_"):
        pytest.importorskip("trl")
    spec = COMMANDS[command]
    values = _values(command, flag, kind, root)
    if flag == "config":
        values = {"config": values.pop("config"), **values}
    code = RUNNERS[command](values, monkeypatch)
    label = flag if spec.env else f"--{flag}"
    assert_input_error(code, capsys.readouterr().err, label, kind)
    if spec.output_flag and spec.output_flag != flag:
        assert not Path(values[spec.output_flag]).exists(), "the output folder was created"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "parrot-convert"])
def test_good_arguments_pass_the_checks(command, root, monkeypatch, capsys):
    """With every argument right, the command goes on to its work (here: the stand-in that fails the test), so
    each refusal above is the check of that one argument."""
    if command.startswith("train_"):
        pytest.importorskip("trl")
    values = COMMANDS[command].good(root)
    with pytest.raises(AssertionError, match="work started"):
        RUNNERS[command](values, monkeypatch)


# ---------------------------------------------------------------------------------------------- as a user runs them
def _console(name: str, module: str) -> list[str]:
    script = Path(sys.executable).with_name(name)
    return (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]
    )


def test_each_command_in_a_subprocess(root, tmp_path):
    """One wrong argument per command, run as a user runs it: exit code 2 and one `error:` line on stderr."""
    missing_model = str(tmp_path / "no-such-model")
    runs = {
        "parrot-eval": (
            _console("parrot-eval", "transformers_parrot.evaluation.cli")
            + ["--model", missing_model, "--benchmark", "mmmb", "--output", str(tmp_path / "out")],
            "--model",
            "missing",
        ),
        "parrot-convert": (
            _console("parrot-convert", "transformers_parrot.conversion.cli")
            + ["--input", str(root / "a-folder"), "--output", str(tmp_path / "out")],
            "--input",
            "no_config",
        ),
        "parrot-demo": (
            _console("parrot-demo", "transformers_parrot.demo.run") + ["--output", str(root / "a-file.txt" / "out")],
            "--output",
            "under_file",
        ),
        "parrot-chat": (
            _console("parrot-chat", "transformers_parrot.chat.cli") + ["--model", "a//b"],
            "--model",
            "hub_slashes",
        ),
        "quickstart": (
            [sys.executable, str(REPO / "examples" / "quickstart.py"), "--image", str(root / "a-folder")],
            "--image",
            "folder",
        ),
        "space": ([sys.executable, str(REPO / "examples" / "space" / "app.py")], "PARROT_MODEL", "no_config"),
    }
    if importlib.util.find_spec("trl") is not None:
        good = ["--model_name_or_path", str(root / "model"), "--report_to", "none"]
        for script, flag, kind, value in [
            ("train_sft", "--datasets", "bad_suffix", str(root / "data.tsv")),
            ("train_mlan", "--image_folders", "file", str(root / "a-file.txt")),
            ("train_dpo", "--model_name_or_path", "missing", missing_model),
        ]:
            argv = [sys.executable, str(REPO / "examples" / f"{script}.py"), "--output_dir", str(tmp_path / "out")]
            runs[script] = (argv + good + [flag, value], flag, kind)  # the last --model_name_or_path wins
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PARROT_MODEL": str(root / "a-folder"), "PYTHONWARNINGS": "ignore"}
    procs = {
        name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        for name, (argv, _, _) in runs.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        _, flag, kind = runs[name]
        line = assert_input_error(proc.returncode, err, flag, kind)
        assert ("app.py" if name == "space" else name) in line.split("error:")[0], line  # the program's name
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- the checks themselves
def test_hub_ids_are_accepted_without_the_network(monkeypatch):
    """A well-formed id is taken as it is, offline and online: nothing is resolved (loading it later fails with
    the Hub client's own message when it does not exist)."""

    def no_network(*args, **kwargs):
        raise AssertionError("a check used the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_utils.check_model("someone/no-such-model") == "someone/no-such-model"
    assert cli_utils.check_model("gpt2") == "gpt2"
    assert cli_utils.check_dataset("someone/data:config") == "someone/data:config"
    with pytest.raises(InputError, match="not a valid Hub id"):
        cli_utils.check_hub_id("a b", kind=None)


def test_good_local_values_are_returned_and_nothing_is_created(root, tmp_path):
    assert cli_utils.check_model(str(root / "model")) == str(root / "model")
    assert cli_utils.check_dataset(str(root / "data.json")) == str(root / "data.json")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-0.parquet").write_bytes(b"")
    assert cli_utils.check_dataset(str(tmp_path / "shards")) == str(tmp_path / "shards")
    nested = tmp_path / "a" / "b" / "c"
    assert cli_utils.check_output_folder(str(nested)) == str(nested)
    assert not (tmp_path / "a").exists()
    assert cli_utils.check_folder(str(root / "images")) == str(root / "images")
    assert cli_utils.check_file(str(root / "recipe.yaml")) == str(root / "recipe.yaml")


def test_training_readers_and_the_check_agree_on_file_types():
    """The suffixes the check takes are those the training readers load: `datasets` builders by extension."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    for suffix in cli_utils.DATA_FILE_SUFFIXES:
        builder = {"jsonl": "json"}.get(suffix[1:], suffix[1:])  # as training.data.load_source maps it
        assert builder in _PACKAGED_DATASETS_MODULES, suffix


def test_a_typo_names_the_closest_folder(root):
    with pytest.raises(InputError, match=r"no such local folder \(did you mean .*model\?\)"):
        cli_utils.check_model(str(root / "modle"))


def test_unreadable_and_unwritable_paths(root, monkeypatch):
    """Permissions are read with os.access (the tests may run as root, where every path is readable)."""
    real = os.access

    def access(path, mode):
        return False if Path(path).name in ("model", "config.json", "a-folder") else real(path, mode)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(InputError, match="is not readable"):
        cli_utils.check_model(str(root / "model"))
    with pytest.raises(InputError, match="not writable"):
        cli_utils.check_output_folder(str(root / "a-folder" / "new"))
    with pytest.raises(InputError, match="not readable"):
        cli_utils.check_folder(str(root / "a-folder"))


def test_first_input_error_labels():
    checks = {"model": cli_utils.check_model, "PARROT_MODEL": cli_utils.check_model}
    assert cli_utils.first_input_error({"model": None, "PARROT_MODEL": "ok/id"}, checks) is None
    message = cli_utils.first_input_error({"model": ["ok/id", "a//b"]}, checks)
    assert message.startswith("--model a//b: neither a local model folder nor a valid Hub id")
    assert cli_utils.first_input_error({"PARROT_MODEL": "../x y"}, checks).startswith("PARROT_MODEL ../x y: no such")


def test_parrot_eval_data_dir_must_exist_without_download(root, monkeypatch, capsys):
    """--data_dir is where the benchmark files are downloaded (created when missing); with --no_download it must
    hold them already."""
    values = {**COMMANDS["parrot-eval"].good(root), "benchmark": "mmmb", "data_dir": str(root / "no-such-data")}
    with pytest.raises(AssertionError, match="work started"):  # a new folder: the download goes there
        run_eval(values, monkeypatch)
    code = run_eval({**values, "no_download": True}, monkeypatch)
    assert_input_error(code, capsys.readouterr().err, "--data_dir", "missing")


def test_parrot_eval_checks_every_benchmark_of_a_list(root, monkeypatch, capsys):
    values = {**COMMANDS["parrot-eval"].good(root), "benchmark": f"mmmb,{root / 'bench_en.tsv'},{root / 'gone.tsv'}"}
    line = assert_input_error(run_eval(values, monkeypatch), capsys.readouterr().err, "--benchmark", "missing")
    assert "gone.tsv" in line and "bench_en.tsv" not in line


def test_check_script_inputs_for_programs_that_build_the_dataclasses(root):
    """The library check behind ParrotTrlParser, on dataclasses built in Python; --hub_model_id with
    --push_to_hub is checked as a repo id."""
    pytest.importorskip("trl")
    from trl import ModelConfig

    from transformers_parrot.training import ParrotScriptArguments, ParrotSFTConfig, check_script_inputs

    config = ParrotSFTConfig(output_dir=str(root / "never-sft"), report_to="none", use_cpu=True, bf16=False)
    good = ParrotScriptArguments(datasets=[str(root / "data.json")])
    check_script_inputs(good, config, ModelConfig(model_name_or_path=str(root / "model")))
    with pytest.raises(InputError, match=r"^--datasets .*data\.tsv: unsupported file type \.tsv"):
        check_script_inputs(ParrotScriptArguments(datasets=[str(root / "data.tsv")]), config, ModelConfig())
    pushed = ParrotSFTConfig(
        output_dir=str(root / "never-sft"), report_to="none", use_cpu=True, bf16=False, push_to_hub=True
    )
    pushed.hub_model_id = "me//model"  # set after __post_init__, which would otherwise ask the Hub for a token
    with pytest.raises(InputError, match=r"^--hub_model_id me//model: not a valid Hub id"):
        check_script_inputs(good, pushed, ModelConfig())
    assert not (root / "never-sft").exists()


def test_config_file_flags_take_inline_json_and_both_spellings():
    """`--deepspeed` / `--fsdp_config` may be inline JSON (transformers parses it); a path is checked in either
    spelling, and a flag without its value is refused by name."""
    pytest.importorskip("trl")
    from transformers_parrot.training.inputs import _flag_values

    assert _flag_values(["--deepspeed", "{}", "--fsdp_config=f.json", "--deepspeed"], "--deepspeed") == ["{}", None]
    assert _flag_values(["--fsdp_config=f.json"], "--fsdp_config") == ["f.json"]
