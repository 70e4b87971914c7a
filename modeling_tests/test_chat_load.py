"""`benchmarks/bench_load.py --target chat` in a small configuration: `parrot-chat` on a tiny Parrot (127.0.0.1),
8 requests from 4 concurrent clients, a quarter malformed, two rounds: every good request gets transformers' greedy
answer, every bad one a clear error, the server answers afterwards and its RSS does not grow by more than 64 MiB."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module
    spec.loader.exec_module(module)
    return module


def test_chat_under_a_small_load():
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    result = _bench().run(
        "chat", n_requests=8, n_clients=4, rounds=2, bad_fraction=0.25, max_new_tokens=4, rss_growth_mib=64.0
    )
    assert result["failures"] == [], result["failures"]
    for round_result in result["round_results"]:
        assert round_result["good_answered_correctly"] == round_result["good"] == 6
        assert round_result["bad_clear_error"] == round_result["bad"] == 2
    assert result["still_answers_afterwards"] and result["passed"]
