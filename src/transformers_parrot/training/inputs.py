"""The path arguments of the training scripts (examples/train_sft.py, train_mlan.py, train_dpo.py), checked right
after parsing and before anything is loaded: models (``--model_name_or_path``, ``--vision_model``, ``--llm_model``:
a folder with config.json or a well-formed Hub id), data sources (``--datasets``, ``--text_datasets``,
``--visual_datasets``: a data file the readers take, a folder of them, or a Hub dataset id), ``--image_folders``,
``--output_dir``, ``--resume_from_checkpoint``, and the ``--config``, ``--deepspeed`` and ``--fsdp_config`` files
(before parsing, as transformers and TRL read them while parsing; the last two may also be inline JSON).

`ParrotTrlParser` is `trl.TrlParser` with these checks: a wrong value ends the script with one line
``<script>: error: --flag VALUE: what is wrong`` on stderr and exit code 2. `check_script_inputs` is the same check
for programs that build the dataclasses themselves.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable

from trl import TrlParser

from ..cli_utils import (
    DATA_FILE_SUFFIXES,
    InputError,
    check_dataset,
    check_file,
    check_folder,
    check_hub_id,
    check_model,
    check_output_folder,
    first_input_error,
    namespace_values,
)

SCRIPT_INPUT_CHECKS = {
    "model_name_or_path": check_model,
    "vision_model": check_model,
    "llm_model": check_model,
    "datasets": check_dataset,
    "text_datasets": check_dataset,
    "visual_datasets": check_dataset,
    "image_folders": check_folder,
    "output_dir": check_output_folder,
    "resume_from_checkpoint": check_folder,
}
"""Each path argument of the scripts' dataclasses and its check (`cli_utils`); the training data readers take
local files ending in one of `cli_utils.DATA_FILE_SUFFIXES`."""


CONFIG_FILE_FLAGS = {
    "--config": ("a YAML file", False),
    "--deepspeed": ("a DeepSpeed JSON file (or inline JSON)", True),
    "--fsdp_config": ("an FSDP JSON file (or inline JSON)", True),
}
"""Flags whose file transformers or TRL read while parsing: what each needs, and whether inline JSON is allowed."""


def _flag_values(args: list[str], flag: str) -> list[str | None]:
    """The values given to ``flag`` in ``args`` (``--flag VALUE`` or ``--flag=VALUE``); None for a missing value."""
    values: list[str | None] = []
    for i, arg in enumerate(args):
        if arg == flag:
            values.append(args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None)
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1 :])
    return values


def _hub_repo(value: str) -> str:
    return check_hub_id(value, kind=None)


def input_problem(*arguments) -> str | None:
    """The first path argument of the scripts' dataclasses (`ParrotScriptArguments`, the training config,
    `trl.ModelConfig`) that cannot work, as ``--flag VALUE: problem``; None when every one can."""
    values: dict = {}
    for argument in arguments:
        values.update(namespace_values(argument))
    checks = dict(SCRIPT_INPUT_CHECKS)
    if values.get("push_to_hub"):
        checks["hub_model_id"] = _hub_repo
    return first_input_error(values, checks)


def check_script_inputs(*arguments) -> None:
    """`input_problem` as an exception: `InputError` (a ValueError) with the whole message."""
    problem = input_problem(*arguments)
    if problem:
        raise InputError(problem)


class ParrotTrlParser(TrlParser):
    """`trl.TrlParser` that checks the path arguments after parsing (`input_problem`), and the ``--config`` file
    before reading it: a wrong one is ``<prog>: error: --flag VALUE: problem`` and exit code 2."""

    def _input_error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args_and_config(self, args: Iterable[str] | None = None, *pargs, **kwargs):
        args = list(args) if args is not None else sys.argv[1:]
        for flag, (what, inline_json) in CONFIG_FILE_FLAGS.items():  # read while parsing: checked before
            for value in _flag_values(args, flag):
                if value is None:
                    self._input_error(f"{flag}: needs {what}")
                if inline_json and value.lstrip().startswith("{"):
                    continue
                problem = first_input_error({flag.lstrip("-"): value}, {flag.lstrip("-"): check_file})
                if problem:
                    self._input_error(problem)
        output = super().parse_args_and_config(args, *pargs, **kwargs)
        problem = input_problem(*(o for o in output if dataclasses.is_dataclass(o)))
        if problem:
            self._input_error(problem)
        return output


__all__ = [
    "CONFIG_FILE_FLAGS",
    "DATA_FILE_SUFFIXES",
    "SCRIPT_INPUT_CHECKS",
    "input_problem",
    "check_script_inputs",
    "ParrotTrlParser",
]
