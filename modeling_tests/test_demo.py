"""`parrot-demo` (issues 6, 13, 16), reduced: `--quick` generates the data, trains stage 1 + stage 2 through the
library's `train_sft`, evaluates all languages with one `evaluate` call, plots, saves a Hub-ready folder; then
that folder loads with trust_remote_code in a process where transformers_parrot cannot be imported and answers
through `pipeline`. Offline, CPU, well under 90 s. The five-seed accuracy check is a benchmark
(benchmarks/bench_demo_seeds.py), not a test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")
matplotlib = pytest.importorskip("matplotlib")

from transformers_parrot.demo import LANGUAGES, run  # noqa: E402
from transformers_parrot.demo.data import (  # noqa: E402
    CAPTION_PROMPTS,
    KINDS,
    WORDS,
    Scene,
    caption,
    heldout_rows,
    render,
    write_test_tsvs,
    write_training_data,
)
from transformers_parrot.languages import QUESTIONS  # noqa: E402

LOADER = r"""
import json, sys
sys.modules["transformers_parrot"] = None  # any import of the package now fails
try:
    import transformers_parrot  # noqa: F401
    raise SystemExit("transformers_parrot should not be importable here")
except ImportError:
    pass
import transformers
from PIL import Image
folder, image_path, question = sys.argv[1:4]
Auto = transformers.AutoModelForImageTextToText
model = Auto.from_pretrained(folder, trust_remote_code=True).eval()
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor)
chat = [{"role": "user", "content": [{"type": "image", "image": Image.open(image_path)},
                                     {"type": "text", "text": question}]}]
reply = pipe(text=chat, max_new_tokens=4, generate_kwargs={"do_sample": False})[0]["generated_text"]
answer = reply[-1]["content"] if isinstance(reply, list) else reply
print(json.dumps({"answer": answer, "model_module": type(model).__module__,
                  "processor_module": type(processor).__module__}))
"""

EXPECTED_FILES = [
    "accuracy_by_language.png",
    "loss.png",
    "loss_log.json",
    "results.json",
    "routing_heatmap.png",
    "eval/predictions.jsonl",
    "eval/results.json",
    "eval/results.md",
    "eval/results.csv",
    "eval/accuracy_by_language.png",
    "eval/model_index.json",
    "model/config.json",
    "model/model.safetensors",
    "model/README.md",
    "model/modeling_parrot.py",
    "model/configuration_parrot.py",
    "model/processing_parrot.py",
    *(f"data/test/parrot_demo_{code}.tsv" for code in ("en", "cn", "pt", "ar", "tr", "ru")),
    "data/stage1.json",
    "data/stage2.json",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parrot-demo")
    backend = dict.__getitem__(matplotlib.rcParams, "backend")  # raw value: reading it must not resolve it
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        assert run.main(["--quick", "--output", str(out), "--no-progress", "--seed", "3", "--threads", "1"]) == 0
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend, "the demo switched matplotlib's backend"
    return out, printed.getvalue()


def test_every_output_file(demo_run):
    out, _ = demo_run
    for name in EXPECTED_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "work").exists()  # intermediate checkpoints are removed
    for name in ("accuracy_by_language.png", "routing_heatmap.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_results_json(demo_run):
    out, _ = demo_run
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["smoke_test"] is True
    assert list(results["accuracy"]) == list(LANGUAGES)
    assert all(0.0 <= acc <= 100.0 for acc in results["accuracy"].values())
    assert results["min_accuracy"] == min(results["accuracy"].values())
    assert results["steps"] == {"stage1": run.QUICK["stage1_steps"], "stage2": run.QUICK["stage2_steps"]}
    assert set(results["timings_s"]) == {"data", "stage 1", "stage 2", "evaluation", "total"}
    assert results["wall_time_s"] > 0
    assert set(results["routing_mean_weight"]) == set(LANGUAGES)
    for weights in results["routing_mean_weight"].values():
        assert len(weights) == 6 and abs(sum(weights) - 1.0) < 1e-4
    summary = results["routing_summary"]
    assert set(summary["tv_from_uniform"]) == set(LANGUAGES)
    # both stages ran through the trainer and logged losses
    log = json.loads((out / "loss_log.json").read_text(encoding="utf-8"))
    assert {e["stage"] for e in log if "loss" in e} == {1, 2}
    # the one evaluate() call covers all six languages, every question once
    evaluation = json.loads((out / "eval" / "results.json").read_text(encoding="utf-8"))
    assert set(evaluation["parrot_demo"]) == set(LANGUAGES)
    records = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text("utf-8").splitlines()]
    assert len(records) == len(LANGUAGES) * 4 * run.QUICK["test_per_kind"]
    assert {r["language"] for r in records} == set(LANGUAGES)
    for language in LANGUAGES:
        hits = [r["hit"] for r in records if r["language"] == language]
        assert results["accuracy"][language] == pytest.approx(100.0 * sum(hits) / len(hits))
    # Hub-ready folder: remote code, auto_map, a card with the results that says it is a smoke test
    config = json.loads((out / "model" / "config.json").read_text(encoding="utf-8"))
    assert config["auto_map"]["AutoModelForImageTextToText"].startswith("modeling_parrot.")
    assert config["use_moe"] is True
    card = (out / "model" / "README.md").read_text(encoding="utf-8")
    assert "parrot-demo" in card and "model-index" in card and "Smoke test" in card


def test_terminal_summary_and_listing(demo_run):
    out, printed = demo_run
    assert "smoke test" in printed  # --quick says plainly what it is
    for stage in ("1/4 data", "2/4 stage 1", "3/4 stage 2", "4/4 evaluation"):
        assert f"[parrot-demo] {stage}" in printed, stage
    assert "held-out accuracy" in printed and "overall" in printed
    for kind in KINDS:
        assert kind in printed
    assert "distance from uniform" in printed
    assert f"{out}/" in printed
    for name in ("model/", "eval/", "data/", "routing_heatmap.png", "results.json"):
        assert name in printed, name


def test_loads_without_the_package_and_answers_through_pipeline(demo_run, tmp_path):
    out, _ = demo_run
    image = tmp_path / "scene.png"
    render(Scene("circle", "red", 1, "left", 7)).save(image)
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(out / "model"), str(image), QUESTIONS["pt"]["colour"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(info["answer"], str)
    assert not info["model_module"].startswith("transformers_parrot")
    assert not info["processor_module"].startswith("transformers_parrot")


@pytest.mark.parametrize("languages", ["en,de", "xx", ",", "en,klingon,fr"])
def test_unknown_language_is_a_clear_error(languages, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--languages", languages, "--output", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "parrot-demo: error:" in err and "Traceback" not in err
    assert "en, zh, pt, ar, tr, ru" in err
    for bad in (x for x in languages.split(",") if x and x not in LANGUAGES):
        assert repr(bad) in err
    assert not (tmp_path / "never").exists()


def test_language_aliases_keep_the_demo_order():
    assert run.parse_languages("ru, cn,en") == ("en", "zh", "ru")
    assert run.parse_languages("Arabic") == ("ar",)


def test_routing_summary_against_a_hand_computation():
    uniform = [1 / 6] * 6
    one_hot = [1.0, 0, 0, 0, 0, 0]
    summary = run.routing_summary({"en": uniform, "zh": one_hot})
    assert summary["tv_from_uniform"]["en"] == pytest.approx(0.0)
    assert summary["tv_from_uniform"]["zh"] == pytest.approx(5 / 6)  # 0.5 * (5/6 + 5 * 1/6)
    assert summary["mean_pairwise_tv_between_languages"] == pytest.approx(5 / 6)
    assert summary["max_abs_deviation_from_uniform"] == pytest.approx(5 / 6)
    assert summary["top_expert"]["zh"] == 0


def test_data_is_deterministic_and_well_formed(tmp_path):
    a = write_test_tsvs(tmp_path / "a", seed=5, per_kind=3)
    b = write_test_tsvs(tmp_path / "b", seed=5, per_kind=3)
    c = write_test_tsvs(tmp_path / "c", seed=6, per_kind=3)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]
    assert [p.name for p in a] == [f"parrot_demo_{code}.tsv" for code in ("en", "cn", "pt", "ar", "tr", "ru")]
    from transformers_parrot.evaluation import load_tsv

    samples, bad = load_tsv(a[3], "ar")
    assert not bad and len(samples) == 12
    assert {s.category for s in samples} == set(KINDS)
    assert all(s.answer in s.options and len(s.options) == 4 for s in samples)
    # answers are in the question's language: the Russian options are Cyrillic, the Chinese ones CJK
    ru = heldout_rows(5, "ru", 2)
    assert all(any("\u0400" <= ch <= "\u04ff" for ch in row[row["answer"]]) for row in ru)
    zh = heldout_rows(5, "zh", 2)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in row[row["answer"]]) for row in zh)
    s1 = write_training_data(tmp_path / "t1", seed=1, num_images=8, stage1_samples=4)
    s2 = write_training_data(tmp_path / "t2", seed=1, num_images=8, stage1_samples=4)
    assert s1 == s2
    assert (tmp_path / "t1" / "stage2.json").read_bytes() == (tmp_path / "t2" / "stage2.json").read_bytes()
    train = json.loads((tmp_path / "t1" / "stage2.json").read_text(encoding="utf-8"))
    assert len(train) == 16 and {row["style"] for row in train} <= {"mc", "free", "caption"}
    stage1 = json.loads((tmp_path / "t1" / "stage1.json").read_text(encoding="utf-8"))
    assert len(stage1) == 4 and all(
        row["conversations"][0]["value"] == f"<image>\n{CAPTION_PROMPTS['en']}" for row in stage1
    )


def test_stage2_mixes_descriptions_in_every_language_and_balanced_kinds(tmp_path):
    summary = write_training_data(tmp_path, seed=2, num_images=400, stage1_samples=0, caption_ratio=0.3)
    train = json.loads((tmp_path / "stage2.json").read_text(encoding="utf-8"))
    assert summary["stage2_samples"] == len(train) == 800
    captions = [row for row in train if row["style"] == "caption"]
    assert 0.25 < len(captions) / len(train) < 0.35
    assert {row["language"] for row in captions} == set(LANGUAGES)
    for row in captions:  # the prompt and every attribute word are in the sample's language
        assert row["conversations"][0]["value"] == f"<image>\n{CAPTION_PROMPTS[row['language']]}"
        if row["language"] != "en":
            assert all(
                part in WORDS[row["language"]].values() for part in row["conversations"][1]["value"].split(", ")
            )
    questions = [row["kind"] for row in train if row["style"] != "caption"]
    shares = [questions.count(kind) / len(questions) for kind in KINDS]
    assert max(shares) - min(shares) < 0.06, dict(zip(KINDS, shares))
    # a description names what the drawing shows
    scene = Scene("star", "red", 2, None, 0)
    assert caption(scene) == "Two red stars." and caption(scene, "zh") == "两个, 红色, 星形"
    assert caption(Scene("circle", "blue", 1, "left", 0), "ru") == "один, синий, круг, слева"


def test_stage1_shows_pictures_in_english_and_languages_in_text(tmp_path):
    """The default recipe's stage 1: every picture comes with an English description and an English question; the
    text-only samples write the scene in one language's words and ask in that language; stage 2 is as by default."""
    summary = write_training_data(
        tmp_path, seed=4, num_images=48, stage1_samples=40, stage1_questions=True, stage1_text_ratio=1.0
    )
    stage1 = json.loads((tmp_path / "stage1.json").read_text(encoding="utf-8"))
    pictures = [row for row in stage1 if "image" in row]
    text = [row for row in stage1 if "image" not in row]
    assert len(pictures) == 80 and len(text) == 40 == summary["stage1_text_only"]
    assert len({row["image"] for row in pictures}) == 40
    for row in pictures:  # English only: the prompt is ASCII and names no other language's words
        prompt, answer = (turn["value"] for turn in row["conversations"])
        assert prompt.startswith("<image>\n") and prompt.isascii() and answer.isascii()
    seen = set()
    for row in text:
        prompt, answer = (turn["value"] for turn in row["conversations"])
        assert "<image>" not in prompt
        scene_words = prompt.split("\n")[0]
        language = next(
            lang
            for lang in LANGUAGES
            if lang != "en"
            and all(w in WORDS[lang].values() for w in scene_words.split(", "))
            or lang == "en"
            and scene_words.endswith(".")
        )  # "Two red stars."
        seen.add(language)
        if language != "en":  # the answer is in the scene's language
            assert all(w in WORDS[language].values() for w in answer.split(", ")), (scene_words, answer)
    assert seen == set(LANGUAGES)
    # stage1_text_in_english: the same samples, the scene line written in English, question and answer unchanged
    write_training_data(
        tmp_path / "en",
        seed=4,
        num_images=48,
        stage1_samples=40,
        stage1_questions=True,
        stage1_text_ratio=1.0,
        stage1_text_in_english=True,
    )
    english = json.loads((tmp_path / "en" / "stage1.json").read_text(encoding="utf-8"))
    assert [row["id"] for row in english] == [row["id"] for row in stage1]
    for own, cross in zip(stage1, english):
        if "image" in own:
            assert cross == own
            continue
        own_scene, own_rest = own["conversations"][0]["value"].split("\n", 1)
        scene, rest = cross["conversations"][0]["value"].split("\n", 1)
        assert rest == own_rest and cross["conversations"][1] == own["conversations"][1]
        assert scene.isascii() and scene.endswith(".")  # "Two red stars."
        if own_scene.endswith("."):
            assert scene == own_scene  # an English sample is unchanged
        else:  # the same scene: count, colour, shape (and position) read back from the own-language words
            language = next(
                lang
                for lang in LANGUAGES
                if lang != "en" and all(w in WORDS[lang].values() for w in own_scene.split(", "))
            )
            value = {w: v for v, w in WORDS[language].items()}
            count, colour, shape, *position = (value[w] for w in own_scene.split(", "))
            assert scene == caption(Scene(shape, colour, count, position[0] if position else None, 0))
    # `--fast_llm`'s data (the writer's defaults): no questions, no text in stage 1
    plain = write_training_data(tmp_path / "plain", seed=4, num_images=48, stage1_samples=40)
    assert plain["stage1_samples"] == 40 and plain["stage1_text_only"] == 0


def test_default_and_fast_llm_settings():
    """The default recipe needs the routing (English pictures, slow LLM in stage 2); `--fast_llm` is the earlier one;
    flags override either."""
    from transformers_parrot.demo.run import FAST_LLM, DemoSettings, build_parser, settings_from_args

    default = settings_from_args(build_parser().parse_args([]))
    assert default == DemoSettings(output=default.output)
    assert default.stage1_questions and default.stage1_text_ratio == 1.0 and default.stage1_text_in_english
    assert default.stage2_llm_lr < default.stage2_lr  # the LLM is slowed, the MoE is not
    custom = settings_from_args(build_parser().parse_args(["--lr", "2e-3", "--llm_lr", "5e-5", "--steps", "7"]))
    assert (custom.stage2_lr, custom.stage2_llm_lr, custom.stage2_steps) == (2e-3, 5e-5, 7)
    fast = settings_from_args(build_parser().parse_args(["--fast_llm"]))
    assert all(getattr(fast, name) == value for name, value in FAST_LLM.items())
    assert fast.stage2_llm_lr is None and not fast.stage1_questions and fast.stage1_text_ratio == 0
    quick = settings_from_args(build_parser().parse_args(["--fast_llm", "--quick"]))
    assert quick.smoke_test and quick.stage1_steps == 3 and not quick.stage1_questions
