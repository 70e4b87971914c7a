"""Offline tests of the multilingual evaluator (transformers_parrot.evaluation)."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers_parrot.evaluation import (  # noqa: E402
    INSTRUCTIONS,
    DatasetFormatError,
    EvaluationConfigError,
    build_prompt,
    evaluate,
    extract_choice,
    load_tsv,
    normalize_language,
    resolve_benchmark_file,
)
from transformers_parrot.evaluation import cli as eval_cli  # noqa: E402
from transformers_parrot.evaluation import runner as eval_runner  # noqa: E402

LANGS = ["en", "zh", "pt", "ar", "tr", "ru"]
FILE_CODE = {"en": "en", "zh": "cn", "pt": "pt", "ar": "ar", "tr": "tr", "ru": "ru"}
COLORS = {
    "en": ["red", "green", "blue", "yellow"],
    "zh": ["红色", "绿色", "蓝色", "黄色"],
    "pt": ["vermelho", "verde", "azul", "amarelo"],
    "ar": ["أحمر", "أخضر", "أزرق", "أصفر"],
    "tr": ["kırmızı", "yeşil", "mavi", "sarı"],
    "ru": ["красный", "зелёный", "синий", "жёлтый"],
}
RGB = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 20)]


def png_b64(color=(128, 64, 32), size=(20, 14)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------------------------------------------
# Synthetic MMMB: 4 good rows per language (answers A, B, C, D), plus some bad rows.
# Rows 0,1: category "perception"; rows 2,3: "reasoning". l2-category: rows 0,2 "x"; rows 1,3 "y".
# --------------------------------------------------------------------------------------------------------------
MMMB_PREDICTIONS = {
    # hits:                                                    T      T       F    F ("(d)" is not a capital letter)
    "en": ["A", "Answer: B.", "D", "(d)"],
    # 蓝色 = C (wrong); "答案是B" has no standalone letter and no option text; C right; no answer
    "zh": ["蓝色", "答案是B", "C", "我不知道"],
    "pt": ["A", "B", "C", "D"],
    # option text in Arabic (right), letter (right), Arabic text of C (right), empty (wrong)
    "ar": ["أحمر", "B", "أزرق", ""],
    # two letters -> unanswered, right, two letters, right
    "tr": ["A ve B", "B", "A and B", "D"],
    # "синий" = C (wrong), "зелёный" = B (right), right, refusal (wrong)
    "ru": ["Ответ: синий", "зелёный", "C", "Sorry, I can't help with images of people yet."],
}
# hand-computed from the table above
MMMB_EXPECTED = {
    "en": {
        "overall": 50.0,
        "category": {"perception": 100.0, "reasoning": 0.0},
        "l2-category": {"x": 50.0, "y": 50.0},
        "skipped": 1,
    },
    "zh": {
        "overall": 25.0,
        "category": {"perception": 0.0, "reasoning": 50.0},
        "l2-category": {"x": 50.0, "y": 0.0},
        "skipped": 1,
    },
    "pt": {
        "overall": 100.0,
        "category": {"perception": 100.0, "reasoning": 100.0},
        "l2-category": {"x": 100.0, "y": 100.0},
        "skipped": 1,
    },
    "ar": {
        "overall": 75.0,
        "category": {"perception": 100.0, "reasoning": 50.0},
        "l2-category": {"x": 100.0, "y": 50.0},
        "skipped": 1,
    },
    "tr": {
        "overall": 50.0,
        "category": {"perception": 50.0, "reasoning": 50.0},
        "l2-category": {"x": 0.0, "y": 100.0},
        "skipped": 1,
    },
    "ru": {
        "overall": 50.0,
        "category": {"perception": 50.0, "reasoning": 50.0},
        "l2-category": {"x": 50.0, "y": 50.0},
        "skipped": 0,
    },
}
BAD_ROWS = {  # language -> (index, reason substring)
    "en": (10, "missing answer"),
    "zh": (11, "no options"),
    "pt": (12, "undecodable base64"),
    "ar": (13, "unknown language code"),
    "tr": (14, "image file not found"),
}


def mmmb_rows(lang: str, image_dir: Path) -> list[dict]:
    rows = []
    for i in range(4):
        row = {
            "index": i,
            "question": f"[{lang}-{i}] Which colour is shown?",
            "hint": "",
            "A": COLORS[lang][0],
            "B": COLORS[lang][1],
            "C": COLORS[lang][2],
            "D": COLORS[lang][3],
            "answer": "ABCD"[i],
            "category": "perception" if i < 2 else "reasoning",
            "l2-category": "x" if i % 2 == 0 else "y",
            "image": png_b64(RGB[i]),
            "image_path": "",
        }
        if lang == "tr" and i % 2 == 1:  # some rows with image_path instead of base64
            p = image_dir / f"tr_{i}.png"
            Image.new("RGB", (16, 16), RGB[i]).save(p)
            row["image"] = ""
            row["image_path"] = os.path.relpath(p, image_dir.parent)
        rows.append(row)
    bad = dict(rows[0], index=BAD_ROWS.get(lang, (None,))[0], question="bad row")
    if lang == "en":
        bad["answer"] = ""
    elif lang == "zh":
        bad.update(A="", B="", C="", D="")
    elif lang == "pt":
        bad["image"] = "@@@@ this is not base64 data at all, far more than sixty-four characters long @@@@"
    elif lang == "ar":
        for r in rows:
            r["language"] = "ar"
        bad["language"] = "xx"
    elif lang == "tr":
        bad["image"] = ""
        bad["image_path"] = "images/does_not_exist.png"
    if lang != "ru":
        rows.insert(2, bad)
    return rows


def write_tsv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "mmmb" / "images").mkdir(parents=True)
    for lang in LANGS:
        write_tsv(root / "mmmb" / f"mmmb_{FILE_CODE[lang]}.tsv", mmmb_rows(lang, root / "mmmb" / "images"))
    write_mmbench(root)
    return root


# --------------------------------------------------------------------------------------------------------------
# Synthetic MMBench (circular): en has 3 questions (q0 with 3 variants, q1 with 2, q2 with 1), zh has 2.
# Variants point at the original row's image by index (VLMEvalKit convention).
# --------------------------------------------------------------------------------------------------------------
def rotate(options: list[str], k: int) -> list[str]:
    return options[k:] + options[:k]


def write_mmbench(root: Path):
    for lang, groups in {
        "en": [(0, 3, "cat1", "L1"), (1, 2, "cat1", "L1"), (2, 1, "cat2", "L2")],
        "zh": [(0, 2, "cat1", "L1"), (1, 2, "cat2", "L2")],
    }.items():
        rows = []
        for q, n_var, cat, l2 in groups:
            opts = COLORS[lang][:3]
            for v in range(n_var):
                shown = rotate(opts, v)
                rows.append(
                    {
                        "index": q + v * 1_000_000,
                        "question": f"[{lang}] mmbench q{q}",
                        "hint": "A hint." if q == 0 else "",
                        "A": shown[0],
                        "B": shown[1],
                        "C": shown[2],
                        "D": "",
                        "answer": "ABC"[shown.index(opts[q % 3])],
                        "category": cat,
                        "l2-category": l2,
                        "image": png_b64(RGB[q]) if v == 0 else str(q),
                    }
                )
        write_tsv(root / "mmbench" / f"mmbench_dev_{FILE_CODE[lang]}.tsv", rows)


# Answer right everywhere except en index 1000001 and zh index 1 -> en 2/3, zh 1/2.
MMBENCH_WRONG = {("en", 1_000_001), ("zh", 1)}


class ScriptedPredictor:
    """Fake model: answers looked up by (language, index); counts calls and rows; can fail after k batches."""

    def __init__(self, answers, fail_after_batches=None):
        self.answers = answers
        self.fail_after = fail_after_batches
        self.batches = 0
        self.rows = []

    def predict(self, items):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.batches += 1
        out = []
        for it in items:
            assert it.image.mode == "RGB" and it.image.size[0] > 0
            assert it.prompt.endswith(INSTRUCTIONS[it.language])
            self.rows.append((it.language, it.index))
            out.append(self.answers(it) if callable(self.answers) else self.answers[(it.language, it.index)])
        return out


def mmmb_answers():
    return {(l, i): MMMB_PREDICTIONS[l][i] for l in LANGS for i in range(4)}


def mmbench_answer(item):
    # the right letter is the one whose option text is the question's colour
    lang = item.language
    q = item.index % 1_000_000
    lines = item.prompt.split("\n")
    letter = next(l[0] for l in lines if len(l) > 3 and l[1:3] == ". " and l[3:] == COLORS[lang][q % 3])
    if (lang, item.index) in MMBENCH_WRONG:
        return "A" if letter != "A" else "B"
    return letter


# --------------------------------------------------------------------------------------------------------------
# Prompts and answer extraction
# --------------------------------------------------------------------------------------------------------------
def test_prompt_format():
    p = build_prompt("What is it?", {"B": "dog", "A": "cat"}, "en", hint="Look closely.")
    assert (
        p
        == "Look closely.\nWhat is it?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
    )
    assert build_prompt("Q", {"A": "x"}, "cn") == "Q\nA. x\n请直接用给定选项中的选项字母回答。"
    assert build_prompt("Q", {"A": "x"}, "ar", hint=None).endswith("\nأجب مباشرةً بحرف الخيار من الاختيارات المعطاة.")
    assert set(INSTRUCTIONS) == set(LANGS)
    assert normalize_language("cn") == normalize_language("ZH") == "zh"


OPTS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    "prediction,options,expected",
    [
        ("B", OPTS, "B"),
        ("(b)", OPTS, None),  # letters are matched case-sensitively, as in VLMEvalKit
        ("(B)", OPTS, "B"),
        ("Answer: C.", OPTS, "C"),
        ("The answer is D", OPTS, "D"),
        ("A and B", OPTS, None),
        ("A, B", OPTS, None),
        ("E", OPTS, None),  # not an option of this row
        ("It is a dog.", OPTS, "B"),
        ("DOG", OPTS, "B"),
        ("a dog or a cat", OPTS, None),  # two option texts
        ("", OPTS, None),
        ("Sorry, I can't help with images of people yet.", OPTS, None),
        ("I'm sorry, but without the image provided I cannot say it is a dog", OPTS, None),
        ("I cannot answer this question.", OPTS, None),
        ("Z", OPTS, None),
        ("Z: the dog", OPTS, None),  # the toolkit's dummy "Z" skips option-text matching
        ("答案是 B", OPTS, "B"),
        ("答案是B", OPTS, None),
        ("猫", {"A": "狗", "B": "猫"}, "B"),
        ("الإجابة: أزرق", {"A": "أحمر", "B": "أزرق"}, "B"),
        ("Правильный ответ — Синий", {"A": "Красный", "B": "синий"}, "B"),
        ("**C**", OPTS, "C"),
        ("[A]", OPTS, "A"),
        ("A) cat", OPTS, "A"),
        ("I think A is right because B is wrong", OPTS, None),
    ],
)
def test_extract_choice(prediction, options, expected):
    assert extract_choice(prediction, options) == expected


# --------------------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------------------
def test_load_tsv_bad_rows_and_image_path(data_dir):
    for lang in LANGS:
        path = resolve_benchmark_file("mmmb", lang, data_dir, download=False)
        assert path.name == f"mmmb_{FILE_CODE[lang]}.tsv"
        samples, bad = load_tsv(path)  # language from the file-name suffix
        assert [s.index for s in samples] == [0, 1, 2, 3]
        assert all(s.language == lang for s in samples)
        if lang in BAD_ROWS:
            idx, reason = BAD_ROWS[lang]
            assert len(bad) == 1 and bad[0].index == idx and reason in bad[0].reason, bad
        else:
            assert bad == []
        for s in samples:
            img = s.load_image()
            assert img.mode == "RGB"
    tr, _ = load_tsv(data_dir / "mmmb" / "mmmb_tr.tsv")
    assert tr[1].image_path is not None and tr[0].image_b64 is not None


def test_wrong_path_and_columns_fail_fast(tmp_path, data_dir):
    with pytest.raises(DatasetFormatError, match="not found"):
        load_tsv(tmp_path / "nope_en.tsv")
    bad = write_tsv(tmp_path / "broken_en.tsv", [{"index": 0, "question": "q", "A": "x", "B": "y"}])
    with pytest.raises(DatasetFormatError) as e:
        load_tsv(bad)
    msg = str(e.value)
    assert "broken_en.tsv" in msg and "answer" in msg and "image" in msg
    with pytest.raises(DatasetFormatError, match="nope"):
        evaluate(predictor=ScriptedPredictor({}), benchmark=str(tmp_path / "nope_en.tsv"), output_dir=tmp_path / "o")
    with pytest.raises(DatasetFormatError, match="missing column"):
        evaluate(predictor=ScriptedPredictor({}), benchmark=str(bad), output_dir=tmp_path / "o")
    with pytest.raises(DatasetFormatError, match="mmmb_cn.tsv"):
        resolve_benchmark_file("mmmb", "zh", tmp_path / "empty", download=False)
    assert not (tmp_path / "o").exists()  # nothing written before the data is validated


# --------------------------------------------------------------------------------------------------------------
# End-to-end with scripted fake models
# --------------------------------------------------------------------------------------------------------------
def test_mmmb_all_languages(tmp_path, data_dir):
    pred = ScriptedPredictor(mmmb_answers())
    out = tmp_path / "out"
    res = evaluate(
        predictor=pred,
        benchmark="mmmb",
        data_dir=data_dir,
        output_dir=out,
        batch_size=5,
        model_name="fake",
        progress=False,
    )
    assert list(res["mmmb"]) == LANGS
    for lang, exp in MMMB_EXPECTED.items():
        got = res["mmmb"][lang]
        assert got["overall"] == pytest.approx(exp["overall"])
        assert got["category"] == pytest.approx(exp["category"])
        assert got["l2-category"] == pytest.approx(exp["l2-category"])
        assert got["n"] == 4 and got["skipped"] == exp["skipped"]
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(res))
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 24 and len(pred.rows) == 24
    first = preds[0]
    assert {"index", "language", "prediction", "choice", "answer", "hit", "benchmark"} <= set(first)
    zh = {p["index"]: p for p in preds if p["language"] == "zh"}
    assert zh[0]["prediction"] == "蓝色" and zh[0]["choice"] == "C" and zh[0]["hit"] is False
    assert zh[2]["choice"] == "C" and zh[2]["hit"] is True and zh[1]["choice"] is None
    skipped = json.loads((out / "skipped.json").read_text(encoding="utf-8"))["mmmb"]
    assert sorted((s["language"], s["index"]) for s in skipped) == sorted((l, i) for l, (i, _) in BAD_ROWS.items())
    assert all(BAD_ROWS[s["language"]][1] in s["reason"] for s in skipped)
    # reports
    csv = (out / "results.csv").read_text(encoding="utf-8").splitlines()
    assert csv[0] == "benchmark,breakdown,name,en,zh,pt,ar,tr,ru"
    assert csv[1] == "mmmb,overall,overall,50.00,25.00,100.00,75.00,50.00,50.00"
    md = (out / "results.md").read_text(encoding="utf-8")
    assert (
        "| MMMB en | zh | pt | ar | tr | ru |" in md
        and "| fake | 50.00 | 25.00 | 100.00 | 75.00 | 50.00 | 50.00 |" in md
    )
    assert "Parrot-7B (paper)" in md
    assert (out / "accuracy_by_language.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mi = json.loads((out / "model_index.json").read_text(encoding="utf-8"))["model-index"][0]
    assert mi["name"] == "fake" and len(mi["results"]) == 6
    assert mi["results"][1]["dataset"]["split"] == "zh" and mi["results"][1]["metrics"][0]["value"] == 25.0


def test_mmbench_circular(tmp_path, data_dir):
    pred = ScriptedPredictor(mmbench_answer)
    out = tmp_path / "out"
    res = evaluate(
        predictor=pred,
        benchmark="mmbench",
        languages="en,cn",
        data_dir=data_dir,
        output_dir=out,
        batch_size=4,
        model_name="fake",
        progress=False,
    )["mmbench"]
    assert list(res) == ["en", "zh"]
    en, zh = res["en"], res["zh"]
    assert en["n"] == 6 and en["questions"] == 3 and en["circular"]
    assert en["overall"] == pytest.approx(200 / 3)  # q0 all 3 variants right, q1 one variant wrong, q2 right
    assert en["category"] == pytest.approx({"cat1": 50.0, "cat2": 100.0})
    assert en["l2-category"] == pytest.approx({"L1": 50.0, "L2": 100.0})
    assert zh["overall"] == pytest.approx(50.0) and zh["category"] == pytest.approx({"cat1": 100.0, "cat2": 0.0})
    # the hint and the variant's rotated options reach the prompt; variants reuse the original image
    assert len(pred.rows) == 10
    # same data scored without circular evaluation: plain row accuracy
    res2 = evaluate(
        predictor=ScriptedPredictor(mmbench_answer),
        benchmark="mmbench",
        languages=["en"],
        data_dir=data_dir,
        output_dir=tmp_path / "out2",
        circular=False,
        progress=False,
    )
    assert res2["mmbench"]["en"]["overall"] == pytest.approx(500 / 6)
    # results.json of the first folder accumulates benchmarks
    evaluate(
        predictor=ScriptedPredictor(mmmb_answers()),
        benchmark="mmmb",
        languages=["en"],
        data_dir=data_dir,
        output_dir=out,
        model_name="fake",
        progress=False,
    )
    both = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(both) == {"mmbench", "mmmb"} and both["mmmb"]["en"]["overall"] == 50.0
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| MMBench en | zh | MMMB en |" in md


def test_predict_fn_and_tsv_path(tmp_path, data_dir):
    calls = []

    def predict_fn(batch):
        calls.append(len(batch))
        out = []
        for _image, prompt, language in batch:
            assert language == "ru"
            i = int(prompt.split("]")[0].split("-")[-1])
            out.append(MMMB_PREDICTIONS["ru"][i])
        return out

    path = data_dir / "mmmb" / "mmmb_ru.tsv"
    res = evaluate(predict_fn=predict_fn, benchmark=str(path), output_dir=tmp_path / "o", batch_size=3, progress=False)
    assert list(res) == ["mmmb"] and res["mmmb"]["ru"]["overall"] == 50.0 and calls == [3, 1]
    # --languages overrides the file-name suffix
    other = tmp_path / "custom.tsv"
    other.write_bytes(path.read_bytes())
    res = evaluate(
        predict_fn=predict_fn,
        benchmark=str(other),
        languages="ru",
        output_dir=tmp_path / "o2",
        progress=False,
        limit=2,
    )
    assert res["custom"]["ru"]["n"] == 2 and res["custom"]["ru"]["overall"] == 50.0


def _final_files(out: Path) -> dict:
    names = [
        "predictions.jsonl",
        "results.json",
        "results.csv",
        "results.md",
        "model_index.json",
        "skipped.json",
        "accuracy_by_language.png",
    ]
    return {n: (out / n).read_bytes() for n in names}


def test_kill_and_resume(tmp_path, data_dir):
    ref_out = tmp_path / "ref"
    evaluate(
        predictor=ScriptedPredictor(mmmb_answers()),
        benchmark="mmmb",
        data_dir=data_dir,
        output_dir=ref_out,
        batch_size=5,
        model_name="fake",
        progress=False,
    )

    out = tmp_path / "run"
    killed = ScriptedPredictor(mmmb_answers(), fail_after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            predictor=killed,
            benchmark="mmmb",
            data_dir=data_dir,
            output_dir=out,
            batch_size=5,
            model_name="fake",
            progress=False,
        )
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10 and not (out / "results.json").exists()
    # simulate a torn write of the next batch
    with open(out / "predictions.jsonl", "a", encoding="utf-8") as f:
        f.write('{"benchmark": "mmmb", "language": "pt", "ind')

    resumed = ScriptedPredictor(mmmb_answers())
    evaluate(
        predictor=resumed,
        benchmark="mmmb",
        data_dir=data_dir,
        output_dir=out,
        batch_size=5,
        model_name="fake",
        progress=False,
    )
    assert len(resumed.rows) == 24 - 10  # finished rows are not recomputed
    assert not set(resumed.rows) & set(killed.rows)
    assert _final_files(out) == _final_files(ref_out)

    # a third run recomputes nothing and rewrites identical files
    again = ScriptedPredictor(mmmb_answers())
    evaluate(
        predictor=again,
        benchmark="mmmb",
        data_dir=data_dir,
        output_dir=out,
        batch_size=2,
        model_name="fake",
        progress=False,
    )
    assert again.rows == [] and _final_files(out) == _final_files(ref_out)
    # a different model in the same folder is refused
    with pytest.raises(EvaluationConfigError):
        evaluate(
            predictor=again, benchmark="mmmb", data_dir=data_dir, output_dir=out, model_name="other", progress=False
        )
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def test_cli_main(tmp_path, data_dir, monkeypatch, capsys):
    seen = {}

    def fake_load_predictor(model_id, **kw):
        seen.update(kw, model=model_id)
        return ScriptedPredictor(mmmb_answers())

    monkeypatch.setattr(eval_runner, "load_predictor", fake_load_predictor)
    out = tmp_path / "cli"
    rc = eval_cli.main(
        [
            "--model",
            "fake/model",
            "--benchmark",
            "mmmb",
            "--languages",
            "en,cn,ar",
            "--data-dir",
            str(data_dir),
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "16",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--no-progress",
            "-q",
        ]
    )
    assert rc == 0
    assert seen == {
        "model": "fake/model",
        "backend": "hf",
        "dtype": "float32",
        "device": "cpu",
        "trust_remote_code": False,
        "max_new_tokens": 16,
    }
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {l: r["overall"] for l, r in res["mmmb"].items()} == {"en": 50.0, "zh": 25.0, "ar": 75.0}
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "mmmb en: accuracy 50.00 % (4 questions, 1 skipped)",
        "mmmb zh: accuracy 25.00 % (4 questions, 1 skipped)",
        "mmmb ar: accuracy 75.00 % (4 questions, 1 skipped)",
    ]
    assert lines[3].startswith("written: ") and f"{out / 'results.json'}, " in lines[3]
    assert all(Path(p).is_file() for p in lines[3].removeprefix("written: ").split(", "))

    rc = eval_cli.main(["--model", "x", "--benchmark", str(tmp_path / "missing_en.tsv"), "--output", str(out)])
    assert rc == 2 and "missing_en.tsv" in capsys.readouterr().err
    rc = eval_cli.main(["--model", "x", "--benchmark", "mmmb", "--languages", "xx", "--output", str(out)])
    assert rc == 2 and "unknown language" in capsys.readouterr().err


def test_console_script_entry_point(monkeypatch, capsys):
    """`parrot-eval` (pyproject's entry point) and `python -m transformers_parrot.evaluation` reach the parser."""
    import importlib.metadata
    import runpy

    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "parrot-eval"]
    monkeypatch.setattr("sys.argv", ["parrot-eval", "--version-of-nothing"])
    with pytest.raises(SystemExit) as exit_info:
        entry.load()()
    assert exit_info.value.code == 2 and "--model" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["python -m transformers_parrot.evaluation", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("transformers_parrot.evaluation", run_name="__main__")
    assert exit_info.value.code == 0 and "--tensor_parallel_size" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------
# Tiny real Parrot model end to end
# --------------------------------------------------------------------------------------------------------------
def _tiny_parrot():
    from transformers_parrot.tiny import tiny_model

    return tiny_model(seed=0)


@pytest.mark.compat
def test_tiny_parrot_end_to_end(tmp_path, data_dir, monkeypatch):
    model, processor = _tiny_parrot()
    kw = dict(
        benchmark="mmmb",
        languages="en,ar",
        data_dir=data_dir,
        batch_size=3,
        max_new_tokens=4,
        model_name="tiny",
        progress=False,
    )
    res = evaluate(model, processor, output_dir=tmp_path / "a", **kw)
    assert set(res["mmmb"]) == {"en", "ar"} and res["mmmb"]["en"]["n"] == 4
    preds = [json.loads(l) for l in (tmp_path / "a" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 8 and all(isinstance(p["prediction"], str) for p in preds)
    # batched left-padded greedy decoding gives the same answers as batch size 1
    res1 = evaluate(model, processor, output_dir=tmp_path / "b", **dict(kw, batch_size=1))
    p1 = [json.loads(l) for l in (tmp_path / "b" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["prediction"] for p in p1] == [p["prediction"] for p in preds]
    assert res1 == res
    # the CLI loads a saved checkpoint through the Auto classes
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    rc = eval_cli.main(
        [
            "--model",
            str(ckpt),
            "--benchmark",
            "mmmb",
            "--languages",
            "en,ar",
            "--data-dir",
            str(data_dir),
            "--output",
            str(tmp_path / "c"),
            "--batch-size",
            "3",
            "--max-new-tokens",
            "4",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--model-name",
            "tiny",
            "--no-progress",
            "-q",
        ]
    )
    assert rc == 0
    assert (tmp_path / "c" / "results.json").read_bytes() == (tmp_path / "a" / "results.json").read_bytes()


def test_hub_download_is_cached(tmp_path, data_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, repo_type=None, local_dir=None, **kw):
        calls.append((repo_id, filename, repo_type))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((data_dir / filename).read_bytes())
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cache = tmp_path / "cache"
    p1 = resolve_benchmark_file("mmbench", "zh", cache)
    p2 = resolve_benchmark_file("mmbench", "cn", cache)
    assert p1 == p2 == cache / "mmbench" / "mmbench_dev_cn.tsv"
    assert calls == [("AIDC-AI/Parrot-dataset", "mmbench/mmbench_dev_cn.tsv", "dataset")]

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DatasetFormatError, match="mmmb/mmmb_ar.tsv"):
        resolve_benchmark_file("mmmb", "ar", cache)


def test_image_failing_at_run_time_is_skipped(tmp_path, data_dir):
    data = eval_runner.prepare_benchmark("mmmb", ["tr"], data_dir)
    (data_dir / "mmmb" / "images" / "tr_1.png").unlink()  # vanishes after validation
    pred = ScriptedPredictor(mmmb_answers())
    res = evaluate(predictor=pred, benchmark=data, output_dir=tmp_path / "o", progress=False)["mmmb"]["tr"]
    assert res["n"] == 3 and res["skipped"] == 2 and res["overall"] == pytest.approx(100 / 3)
    assert ("tr", 1) not in pred.rows
    skipped = json.loads((tmp_path / "o" / "skipped.json").read_text(encoding="utf-8"))["mmmb"]
    assert any(s["index"] == 1 and "cannot be loaded" in s["reason"] for s in skipped)


def test_several_language_files_of_one_benchmark_merge(tmp_path):
    """`--benchmark x_en.tsv,x_cn.tsv` reports both languages (they share the benchmark name)."""

    def rows(lang):
        return [
            {"index": i, "question": f"q{i}", "A": "a", "B": "b", "answer": "A", "category": "c", "image": png_b64()}
            for i in range(3)
        ]

    paths = []
    for code in ("en", "cn"):
        path = tmp_path / f"bench_{code}.tsv"
        pd.DataFrame(rows(code)).to_csv(path, sep="\t", index=False)
        paths.append(str(path))
    results = evaluate(
        predict_fn=lambda items: ["A"] * len(items), benchmark=paths, output_dir=tmp_path / "out", progress=False
    )
    assert set(results["bench"]) == {"en", "zh"}
    assert results["bench"]["en"]["overall"] == results["bench"]["zh"]["overall"] == 100.0
