"""`parrot-demo` (issue 6), reduced: generate data, train stage 1 + stage 2 through the TRL recipes, evaluate with
parrot-eval, plot, save a Hub-ready folder; then load that folder with trust_remote_code in a process where
transformers_parrot cannot be imported and answer through `pipeline`. Offline, CPU, well under 90 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")
pytest.importorskip("matplotlib")

from transformers_parrot.demo import LANGUAGES, run  # noqa: E402
from transformers_parrot.demo.data import QUESTIONS, heldout_rows, write_test_tsvs, write_training_data  # noqa: E402

LOADER = r'''
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
'''


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parrot-demo")
    argv = ["--quick", "--output", str(out), "--no-progress", "--seed", "3", "--threads", "1"]
    assert run.main(argv) == 0
    return out


def test_outputs(demo_run):
    out = demo_run
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["accuracy"]) == list(LANGUAGES)
    assert all(0.0 <= acc <= 100.0 for acc in results["accuracy"].values())
    assert results["steps"] == {"stage1": run.QUICK["stage1_steps"], "stage2": run.QUICK["stage2_steps"]}
    assert results["wall_time_s"] > 0
    assert set(results["routing_mean_weight"]) == set(LANGUAGES)
    for weights in results["routing_mean_weight"].values():
        assert len(weights) == 6 and abs(sum(weights) - 1.0) < 1e-4
    for name in ("accuracy_by_language.png", "routing_heatmap.png", "loss.png", "loss_log.json"):
        assert (out / name).stat().st_size > 0, name
    # both stages ran through the trainer and logged losses
    log = json.loads((out / "loss_log.json").read_text(encoding="utf-8"))
    assert {e["stage"] for e in log if "loss" in e} == {1, 2}
    # parrot-eval outputs cover all six languages
    evaluation = json.loads((out / "eval" / "results.json").read_text(encoding="utf-8"))
    assert set(evaluation["parrot_demo"]) == set(LANGUAGES)
    lines = (out / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(LANGUAGES) * 4 * run.QUICK["test_per_kind"]
    for name in ("results.md", "results.csv", "accuracy_by_language.png", "model_index.json"):
        assert (out / "eval" / name).is_file(), name
    # Hub-ready folder: remote code, auto_map, a card with the results
    model_dir = out / "model"
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["auto_map"]["AutoModelForImageTextToText"].startswith("modeling_parrot.")
    assert config["use_moe"] is True
    for name in ("modeling_parrot.py", "configuration_parrot.py", "processing_parrot.py", "model.safetensors"):
        assert (model_dir / name).is_file(), name
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "parrot-demo" in card and "model-index" in card


def test_loads_without_the_package_and_answers_through_pipeline(demo_run, tmp_path):
    from transformers_parrot.demo.data import Scene, render

    image = tmp_path / "scene.png"
    render(Scene("circle", "red", 1, "left", 7), 48).save(image)
    proc = subprocess.run([sys.executable, "-c", LOADER, str(demo_run / "model"), str(image), QUESTIONS["pt"]["colour"]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(info["answer"], str)
    assert not info["model_module"].startswith("transformers_parrot")
    assert not info["processor_module"].startswith("transformers_parrot")


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
    assert {s.category for s in samples} == {"colour", "shape", "count", "position"}
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
    assert len(train) == 32 and {row["style"] for row in train} <= {"mc", "free"}
