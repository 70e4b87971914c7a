"""`parrot-eval` data parallel under torchrun: two CPU processes (gloo) share the rows of MMMB and circular MMBench
with a tiny saved Parrot; the merged predictions and reports equal a one-process run byte for byte, every row is
predicted exactly once across a failed run, a killed run and the rerun that completes them, and a failing rank fails
the command with its own error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_evaluation import data_dir  # noqa: F401  (fixture: synthetic MMMB / MMBench folders)

from transformers_parrot.evaluation import evaluate

WORKER = Path(__file__).with_name("eval_dp_worker.py")
FLAGS = [
    "--benchmark",
    "mmmb,mmbench",
    "--languages",
    "en,zh",
    "--batch_size",
    "2",
    "--max_new_tokens",
    "4",
    "--dtype",
    "float32",
    "--model_name",
    "tiny",
    "-q",
]


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        _free_port(),
        str(WORKER),
        *argv,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _keys(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    return [
        (r["benchmark"], r["language"], r["index"])
        for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())
    ]


def _saved(out: Path) -> list[tuple]:
    return [k for p in [out / "predictions.jsonl", *sorted(out.glob("predictions.rank*.jsonl"))] for k in _keys(p)]


def _logged(log_dir: Path) -> list[tuple]:
    rows = []
    for path in log_dir.glob("rows.rank*.jsonl"):
        rows += [tuple(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
        path.unlink()
    return rows


@pytest.mark.timeout(600)
def test_two_ranks_equal_one_process_fail_kill_and_resume(tmp_path, data_dir):  # noqa: F811
    from transformers_parrot.tiny import tiny_model

    checkpoint = tmp_path / "ckpt"
    model, processor = tiny_model(seed=0)
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    reference = tmp_path / "one_process"
    evaluate(
        model,
        processor,
        benchmark=["mmmb", "mmbench"],
        languages="en,zh",
        data_dir=data_dir,
        output_dir=reference,
        batch_size=2,
        max_new_tokens=4,
        model_name="tiny",
        progress=False,
    )
    total = len(_keys(reference / "predictions.jsonl"))
    out, logs = tmp_path / "two_ranks", tmp_path / "logs"
    logs.mkdir()
    argv = [
        "--model",
        str(checkpoint),
        "--data_dir",
        str(data_dir),
        "--output",
        str(out),
        *FLAGS,
        "--log_dir",
        str(logs),
    ]

    failed = _torchrun([*argv, "--fail", "1:raise:1"])
    assert failed.returncode != 0
    assert "parrot-eval: error: [rank 1] RuntimeError: rank 1 broke on purpose" in failed.stderr
    after_failure = _saved(out)
    assert 0 < len(after_failure) < total and len(set(after_failure)) == len(after_failure)
    assert not (out / "results.json").exists()
    _logged(logs)

    killed = _torchrun([*argv, "--fail", "0:kill:1"])  # rank 0 SIGKILLed: the launcher stops rank 1 too
    assert killed.returncode != 0, killed.stderr[-3000:]
    after_kill = _saved(out)
    assert len(after_failure) < len(after_kill) < total and len(set(after_kill)) == len(after_kill)
    assert set(after_failure) <= set(after_kill)
    _logged(logs)

    done = _torchrun(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    rerun = _logged(logs)
    assert len(rerun) == total - len(after_kill)  # only the rows no rank had saved are predicted again
    assert not list(out.glob("predictions.rank*.jsonl"))  # merged by rank 0
    for name in ("predictions.jsonl", "results.json", "results.csv", "results.md", "skipped.json", "model_index.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["mmmb en", "mmmb zh", "mmbench en", "mmbench zh"]
    assert lines[-1].startswith("written: ")  # rank 0 alone reports
    assert f"{total}/{total}" in done.stderr and "q/s" in done.stderr  # one bar, counting both ranks' rows
