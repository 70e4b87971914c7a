"""`parrot-demo`: a small Parrot trained from scratch on a generated multilingual VQA task, end to end on CPU.

    parrot-demo                       # ~5 CPU minutes: data, stage 1 + stage 2 (TRL), parrot-eval, plots, model
    parrot-demo --quick --output /tmp/demo

Python: ``from transformers_parrot.demo import DemoSettings, run_demo``.
"""

from .data import LANGUAGES, render, heldout_rows, write_test_tsvs, write_training_data
from .model import DemoModelConfig, build_demo_model
from .run import DemoSettings, build_parser, main, run_demo

__all__ = ["LANGUAGES", "DemoModelConfig", "DemoSettings", "build_demo_model", "build_parser", "main", "render",
           "run_demo", "heldout_rows", "write_test_tsvs", "write_training_data"]
