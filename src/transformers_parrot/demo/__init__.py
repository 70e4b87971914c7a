"""`parrot-demo`: a small Parrot trained from scratch on a generated multilingual VQA task, end to end on CPU.

    parrot-demo                       # a few CPU minutes: data, stage 1 + stage 2, evaluation, plots, model
    parrot-demo --quick --output /tmp/demo   # a seconds-long smoke test of the code path

Python: ``from transformers_parrot.demo import DemoSettings, run_demo``.
"""

from ..languages import LANGUAGES
from .data import heldout_rows, render, write_test_tsvs, write_training_data
from .model import DemoModelConfig, build_demo_model
from .run import TARGET_ACCURACY, DemoSettings, build_parser, main, routing_summary, run_demo

__all__ = [
    "LANGUAGES",
    "TARGET_ACCURACY",
    "DemoModelConfig",
    "DemoSettings",
    "build_demo_model",
    "build_parser",
    "main",
    "render",
    "routing_summary",
    "run_demo",
    "heldout_rows",
    "write_test_tsvs",
    "write_training_data",
]
