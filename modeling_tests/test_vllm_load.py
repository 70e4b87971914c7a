"""`benchmarks/bench_load.py --target vllm` in a small configuration: vLLM's OpenAI server on a tiny Parrot
(127.0.0.1), 8 requests from 4 concurrent clients, a quarter malformed (bad image data, bad JSON, `<image>` without an
image, a wrong role, too many images), two rounds: every good request gets transformers' greedy token ids, every bad
one HTTP 4xx with a message, the server answers afterwards and its RSS does not grow by more than 64 MiB.
Skipped where vLLM is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_load.py"


def test_vllm_server_under_a_small_load():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = bench
    spec.loader.exec_module(bench)
    result = bench.run(
        "vllm", n_requests=8, n_clients=4, rounds=2, bad_fraction=0.25, max_new_tokens=4, rss_growth_mib=64.0
    )
    assert result["failures"] == [], result["failures"]
    for round_result in result["round_results"]:
        assert round_result["good_answered_correctly"] == round_result["good"]
        assert round_result["bad_clear_error"] == round_result["bad"]
    assert result["still_answers_afterwards"] and result["passed"]
