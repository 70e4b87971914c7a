"""The documentation site is true by construction: its generated parts (CLI reference, tables and numbers from
`benchmarks/results/*.json`) match what `utils/generate_docs.py` writes today, every quoted benchmark table lies in
a generated region, every flag of every command is in the CLI reference, and `mkdocs build --strict` passes (when
the `docs` extra is installed). Code blocks are tested by test_readme.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"
REGENERATE = "python utils/generate_docs.py"
# Pages that quote measured numbers: every table with digits there must be generated from benchmarks/results.
MEASURED_PAGES = ("README.md", "docs/demo.md", "docs/performance.md")
NUMBER_CELL = re.compile(r"\**[\d.,–-]*\d[\d.,–-]*\s*(%|×|x|s|ms|MiB|GB)?\**")  # a measured value in a table cell
LANGUAGES = ("en", "zh", "pt", "ar", "tr", "ru")


def _generator():
    spec = importlib.util.spec_from_file_location("generate_docs", REPO / "utils" / "generate_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outside_generated(text: str) -> str:
    generator = _generator()
    return generator.VALUE.sub("", generator.BLOCK.sub("", text))


def test_generated_parts_are_current():
    stale = _generator().stale_pages()
    assert not stale, f"generated parts differ from the parsers / benchmarks/results in {stale}: run `{REGENERATE}`"


def test_unknown_region_names_fail():
    generator = _generator()
    with pytest.raises(KeyError, match="no_such_table"):
        generator.render("<!-- generated: no_such_table -->\nx\n<!-- end generated -->\n", "page.md")
    with pytest.raises(KeyError, match="no_such_value"):
        generator.render("a <!-- value: no_such_value -->1<!-- end value --> b", "page.md")


@pytest.mark.parametrize("page", MEASURED_PAGES)
def test_measured_tables_are_generated(page):
    """A hand-typed table of numbers on a results page would go stale silently: they must be generated."""
    text = _outside_generated((REPO / page).read_text(encoding="utf-8"))
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    typed = [
        line
        for line in text.splitlines()
        if line.startswith("|")
        and any(NUMBER_CELL.fullmatch(cell.strip()) for cell in line.strip().strip("|").split("|"))
    ]
    assert not typed, f"{page}: table rows with numbers outside a generated region (add a generator):\n" + "\n".join(
        typed
    )


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.parametrize("page", ["README.md", "docs/demo.md"])
def test_demo_seed_table_quotes_the_json(page):
    """Read back the rendered five-seed table and compare each cell with demo_seeds.json (independently of the
    generator's code)."""
    runs = json.loads((RESULTS / "demo_seeds.json").read_text())["runs"]
    ablation = json.loads((RESULTS / "demo_routing_ablation.json").read_text())["runs"]
    rows = _table_rows((REPO / page).read_text(encoding="utf-8"), "| seed |")
    assert len(rows) == len(runs)
    for row, run, drops in zip(rows, runs, ablation):
        assert int(row[0]) == run["seed"] and drops["folder"].endswith(f"seed{run['seed']}")
        assert [float(cell) for cell in row[1:7]] == [round(run["accuracy"][lang]) for lang in LANGUAGES]
        assert float(row[8]) == pytest.approx(run["routing_summary"]["mean_pairwise_tv_between_languages"], abs=5e-4)
        worst = max(v for k, v in drops["largest_drop_points"].items() if k != "own router")
        assert float(row[9].split()[0]) == worst
        assert float(row[10]) == pytest.approx(run["wall_s"], abs=0.5)


def test_performance_quotes_the_json():
    text = (DOCS / "performance.md").read_text(encoding="utf-8")
    small = json.loads((RESULTS / "small_cpu.json").read_text())
    rows = {row[0]: row for row in _table_rows(text, "| measure | LLaVA |")}
    for key, label in (("prefill_b1", "prefill, batch 1 (s)"), ("prefill_b8", "prefill, batch 8 (s)")):
        assert float(rows[label][1]) == pytest.approx(small["raw"][key]["llava_median_s"], abs=5e-4)
        assert float(rows[label][3]) == pytest.approx(small["raw"][key]["ratio"], abs=5e-4)
    serving = json.loads((RESULTS / "serving_cpu.json").read_text())
    rows = {row[0]: row for row in _table_rows(text, "| engine |")}
    offline = rows["vLLM offline `LLM.generate`"]
    assert float(offline[3]) == pytest.approx(serving["vllm_offline"]["output_tokens_per_s"], abs=0.05)
    assert small["command"] in text and serving["command"] in text  # each table states its command


def _console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_cli_reference_covers_every_command_and_flag():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parsers = _generator().cli_parsers()
    assert set(parsers) == set(_console_scripts()), "a console script without a generated CLI section"
    for prog, build in parsers.items():
        section = text.split(f"## {prog}\n", 1)[1].split("\n## ", 1)[0]
        for action in build()._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, f"{prog} {flag} is missing from docs/cli.md: run `{REGENERATE}`"


def _nav_files(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return [f for item in nav for f in _nav_files(item)]


def _mkdocs_config() -> dict:
    import yaml

    class Loader(yaml.SafeLoader):  # mkdocs.yml names a Python object (the mermaid fence formatter)
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)
    return yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)


def test_every_page_is_in_the_nav():
    nav = set(_nav_files(_mkdocs_config()["nav"]))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages <= nav, f"docs pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"


def test_screenshot_is_the_space_one():
    assert (DOCS / "assets" / "chat-screenshot.png").read_bytes() == (
        REPO / "examples" / "space" / "screenshot.png"
    ).read_bytes()


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="the docs extra is not installed (pip install -e '.[docs]'); .ci/docs.sh builds the site",
)
def test_mkdocs_build_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "model" / "index.html").read_text(encoding="utf-8")
    for name in ("ParrotConfig", "ParrotForConditionalGeneration", "ParrotProcessor", "ParrotImageProcessor"):
        assert f'id="transformers_parrot.{name}"' in api, f"mkdocstrings rendered no API for {name}"
