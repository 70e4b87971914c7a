"""Multilingual evaluation (MMMB, multilingual MMBench) the way Parrot's paper measured it.

Python API::

    from transformers_parrot.evaluation import evaluate
    results = evaluate(model, processor, benchmark="mmmb", languages=["en", "zh"], output_dir="out")
    results = evaluate(predict_fn=my_fn, benchmark="data/mmbench_dev_ar.tsv", output_dir="out")
    results = evaluate("path/to/checkpoint", backend="vllm", benchmark="mmbench", output_dir="out")

CLI: ``parrot-eval --model PATH_OR_ID --benchmark mmmb --output out``.
"""

from ..benchmark_specs import BENCHMARKS, HUB_DATASET_REPO
from ..languages import FILE_CODES, LANGUAGES, UnknownLanguageError, normalize_language
from .data import BadRow, DatasetFormatError, Sample, load_tsv, resolve_benchmark_file
from .extraction import extract_choice
from .prompts import INSTRUCTIONS, build_prompt
from .runner import (
    EvaluationConfigError,
    FunctionPredictor,
    Predictor,
    PromptItem,
    TransformersPredictor,
    evaluate,
    load_model_and_processor,
    load_predictor,
    prepare_benchmark,
)
from .scoring import score_benchmark, score_rows
from .vllm_predictor import VLLMPredictor

__all__ = [
    "BENCHMARKS",
    "FILE_CODES",
    "HUB_DATASET_REPO",
    "INSTRUCTIONS",
    "LANGUAGES",
    "BadRow",
    "DatasetFormatError",
    "EvaluationConfigError",
    "FunctionPredictor",
    "Predictor",
    "PromptItem",
    "Sample",
    "TransformersPredictor",
    "UnknownLanguageError",
    "VLLMPredictor",
    "build_prompt",
    "evaluate",
    "extract_choice",
    "load_model_and_processor",
    "load_predictor",
    "load_tsv",
    "normalize_language",
    "prepare_benchmark",
    "resolve_benchmark_file",
    "score_benchmark",
    "score_rows",
]
