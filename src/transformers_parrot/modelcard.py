"""Model cards for Parrot checkpoints: converted releases and models trained with this package's recipes.

    from transformers_parrot.modelcard import write_model_card
    write_model_card("out/", config=model.config, model_name="my-parrot", repo_id="me/my-parrot",
                     base_models=["Qwen/Qwen1.5-7B-Chat", "openai/clip-vit-large-patch14-336"],
                     license="apache-2.0", results="eval/results.json", training="Stage 2 on ...")

Card metadata is written with huggingface_hub's ``ModelCardData`` (languages, pipeline tag, library, base models,
license and, given evaluation results, a ``model-index``), so the card parses back with ``ModelCard.load``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from .benchmark_specs import is_builtin_benchmark, model_index
from .languages import LANGUAGES, UnknownLanguageError, normalize_language

PAPER = "https://arxiv.org/abs/2406.02539"
DISTRIBUTION = "transformers-parrot"
# The packages whose declared range the card states: (name in the metadata, extra it comes with or None)
TESTED_PACKAGES = (("transformers", None), ("torch", None), ("bitsandbytes", "quant"))
QUANTIZATION_DOCS = "quantization.md"


def _metadata():
    try:
        return importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def tested_versions() -> dict[str, str]:
    """{package: version range} for `TESTED_PACKAGES`, read from this package's installed metadata (the ranges of
    pyproject.toml, which admit exactly the tested releases); empty when the package is not installed."""
    metadata = _metadata()
    if metadata is None:
        return {}
    from packaging.requirements import Requirement

    ranges: dict[str, str] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        for name, extra in TESTED_PACKAGES:
            in_extra = requirement.marker is not None and requirement.marker.evaluate({"extra": extra or ""})
            wanted = requirement.marker is None if extra is None else in_extra
            if requirement.name == name and wanted and name not in ranges:
                # lower bounds first: ">=4.57,<5.26"
                specs = sorted(requirement.specifier, key=lambda s: (not s.operator.startswith(">"), s.version))
                ranges[name] = ",".join(str(spec) for spec in specs)
    return ranges


def documentation_url(page: str = "") -> str | None:
    """The project's documentation URL (`[project.urls] Documentation` in pyproject.toml, from the installed
    metadata), with `page` appended; None when unknown."""
    metadata = _metadata()
    for entry in (metadata.get_all("Project-URL") or []) if metadata is not None else []:
        label, _, url = entry.partition(",")
        if re.sub(r"[\W_]", "", label).lower() == "documentation":
            return url.strip().rstrip("/") + (f"/{page}" if page else "")
    return None


def eval_results_from(results: str | os.PathLike | Mapping | None, model_name: str) -> list[EvalResult]:
    """EvalResults from the evaluator's ``results.json`` ({benchmark: {language: {"overall": acc, ...} or acc}}) or
    its ``model_index.json`` fragment ({"model-index": [...]}), given as a path or an already-parsed mapping.
    A results.json goes through the evaluator's own model-index builder (`benchmark_specs.model_index`)."""
    if results is None:
        return []
    if not isinstance(results, Mapping):
        results = json.loads(Path(results).read_text(encoding="utf-8"))
    if "model-index" not in results:
        results = model_index(_canonical_results(results), model_name)
    _, evals = model_index_to_eval_results(results["model-index"])
    return list(evals)


def _canonical_results(results: Mapping) -> dict:
    """results.json with every score a mapping with an "overall" accuracy, built-in benchmark names in lower case and
    benchmark language codes canonical ("cn" → "zh")."""
    canonical = {}
    for benchmark, per_language in results.items():
        if not isinstance(per_language, Mapping):
            raise ValueError(f"results[{benchmark!r}] must map languages to scores, got {type(per_language).__name__}")
        scores = {}
        for language, score in per_language.items():
            score = dict(score) if isinstance(score, Mapping) else {"overall": score}
            if score.get("overall") is None:
                raise ValueError(f"results[{benchmark!r}][{language!r}] has no 'overall' accuracy")
            try:
                language = normalize_language(language)
            except UnknownLanguageError:
                pass  # a custom benchmark's own split name
            scores[language] = score
        canonical[benchmark.lower() if is_builtin_benchmark(benchmark) else benchmark] = scores
    return canonical


def _describe(config: Any) -> list[str]:
    if config is None:
        return []
    text, vision = config.text_config, config.vision_config
    moe = (
        f"{config.num_experts} SwiGLU experts (intermediate size {config.moe_intermediate_size}), "
        f"{'dense mixture' if config.moe_top_k is None else f'top-{config.moe_top_k}'}, residual weight "
        f"{config.moe_residual_weight}"
        if config.use_moe
        else "bypassed (use_moe=False)"
    )
    return [
        "| part | setting |",
        "|---|---|",
        f"| vision tower | CLIP ViT, {vision.num_hidden_layers} layers, hidden {vision.hidden_size}, "
        f"{vision.image_size} px / patch {vision.patch_size} |",
        f"| visual tokens | {config.image_seq_length} per image (layer {config.vision_feature_layer}, "
        f"{'CLS kept' if config.vision_feature_select_strategy == 'full' else 'CLS dropped'}) |",
        f"| projector | Linear → {config.projector_hidden_act.upper()} → Linear |",
        f"| multilingual MoE | {moe} |",
        f"| LLM | Qwen2 architecture, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"vocabulary {text.vocab_size} |",
    ]


def _versions_line() -> str:
    ranges = tested_versions()
    if not ranges:
        return "Install `transformers` (5.x, or 4.57)."
    names = {"bitsandbytes": "bitsandbytes (4-bit / 8-bit loading)"}
    stated = ", ".join(f"{names.get(name, name)} `{spec}`" for name, spec in ranges.items())
    return f"Tested versions (the ranges `{DISTRIBUTION}` declares): {stated}."


def quantized_snippet(repo_id: str, trust_remote_code: bool = True) -> str:
    """Loading in 4 bits with a plain `BitsAndBytesConfig` (bitsandbytes; GPU, or its CPU backend)."""
    trc = ", trust_remote_code=True" if trust_remote_code else ""
    docs = documentation_url(QUANTIZATION_DOCS)
    more = f" 8-bit loading, QLoRA and memory per GPU: [quantization docs]({docs})." if docs else ""
    return f"""\
4-bit loading (`pip install bitsandbytes`): only the LLM's linear layers are quantized; the vision tower, the
projector and the multilingual MoE (router and experts) and `lm_head` stay unquantized by the model's own
declaration, so every image is routed exactly as by the unquantized checkpoint. No skip list is needed.{more}

```python
import torch
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_compute_dtype=torch.bfloat16)
model = AutoModelForImageTextToText.from_pretrained("{repo_id}", quantization_config=quantization_config,
                                                    dtype=torch.bfloat16, device_map="auto"{trc}).eval()
```
"""


def usage_snippets(repo_id: str, trust_remote_code: bool = True) -> str:
    trc = ", trust_remote_code=True" if trust_remote_code else ""
    return f"""\
{_versions_line()} With `pip install transformers-parrot` the classes are also available natively
(`import transformers_parrot`) and `trust_remote_code` is not needed.

```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo_id}", dtype=torch.bfloat16{trc}).eval()
processor = AutoProcessor.from_pretrained("{repo_id}"{trc})

messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "图片里有什么？"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open("photo.jpg")], text=prompt, return_tensors="pt").to(model.device)
inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
output = model.generate(**inputs, max_new_tokens=128, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

transformers 4.57 (`AutoModelForVision2Seq` is the 4.x name of the same Auto class):

```python
from transformers import AutoModelForVision2Seq, AutoProcessor

model = AutoModelForVision2Seq.from_pretrained("{repo_id}", torch_dtype="bfloat16"{trc}).eval()
processor = AutoProcessor.from_pretrained("{repo_id}"{trc})
```

Pipeline:

```python
from transformers import pipeline

pipe = pipeline("image-text-to-text", model="{repo_id}"{trc})
messages = [{{"role": "user", "content": [{{"type": "image", "image": "photo.jpg"}},
                                          {{"type": "text", "text": "O que há na imagem?"}}]}}]
print(pipe(text=messages, max_new_tokens=64, return_full_text=False)[0]["generated_text"])
```
"""


def build_model_card(
    config: Any = None,
    *,
    model: Any = None,
    model_name: str = "Parrot",
    repo_id: str | None = None,
    license: str | None = None,
    base_models: Iterable[str] | None = None,
    languages: Iterable[str] = LANGUAGES,
    results: str | os.PathLike | Mapping | None = None,
    converted_from: str | None = None,
    training: str | None = None,
    description: str | None = None,
    tags: Iterable[str] | None = None,
) -> ModelCard:
    """A ModelCard for a Parrot model.

    Args:
        config / model: the ParrotConfig (or the model, whose config is used) described in the card.
        model_name: name in the title and the model-index.
        repo_id: Hub id used in the usage snippets (default: ``model_name``).
        license: license identifier (carried from the original checkpoint when converting); "other" when unknown.
        base_models: the LLM and vision tower the model is built on.
        results: evaluation ``results.json`` / ``model_index.json`` (path or mapping) → ``model-index``.
        converted_from: original checkpoint this was converted from (conversion cards).
        training: free text on how the model was trained (recipe cards).
    """
    if config is None and model is not None:
        config = model.config
    repo_id = repo_id or model_name
    evals = eval_results_from(results, model_name)
    base = [b for b in (base_models or []) if b]
    data = ModelCardData(
        language=list(languages),
        license=license or "other",
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base or None,
        tags=list(tags or [])
        + ["parrot", "multilingual", "vision-language", "mixture-of-experts", "image-text-to-text", "custom_code"],
        model_name=model_name if evals else None,
        eval_results=evals or None,
    )
    lines = [f"# {model_name}", ""]
    lines.append(
        description
        or (
            "Parrot is a multilingual LLaVA-style vision-language model: CLIP vision features go through a projector "
            "and a text-guided mixture of language experts, which turns English-biased visual tokens into "
            f"language-specific ones, before the Qwen LLM ([Parrot, arXiv 2406.02539]({PAPER}))."
        )
    )
    lines.append("")
    if converted_from:
        lines += [
            f"Converted from the original checkpoint [`{converted_from}`](https://huggingface.co/{converted_from}) "
            "to the transformers-native format of `transformers-parrot` (`parrot-convert`); weights are "
            "unchanged apart from dtype, the MoE experts are stored stacked, and an `<image>` token was added "
            "to the tokenizer. The conversion was checked against the original computation (routing weights, "
            "image features after the MoE and last-token logits).",
            "",
        ]
    if training:
        lines += ["## Training", "", training, ""]
    if config is not None:
        lines += ["## Architecture", "", *_describe(config), ""]
    lines += ["## Usage", "", usage_snippets(repo_id), "", quantized_snippet(repo_id), ""]
    lines += [
        'Prompts use ChatML with the default system prompt "You are a helpful assistant."; the image goes '
        "before the user's text. Generation stops at `<|im_end|>`.",
        "",
    ]
    if evals:
        lines += ["## Evaluation", "", "| benchmark | split | accuracy |", "|---|---|---|"]
        lines += [f"| {e.dataset_name} | {e.dataset_split or ''} | {e.metric_value:.2f} |" for e in evals]
        lines.append("")
    lines += [
        "## Citation",
        "",
        "```bibtex",
        "@article{sun2024parrot,",
        "  title={Parrot: Multilingual Visual Instruction Tuning},",
        "  author={Sun, Hai-Long and Zhou, Da-Wei and Li, Yang and Lu, Shiyin and Yi, Chao and Chen, Qing-Guo "
        "and Xu, Zhao and Luo, Weihua and Zhang, Kaifu and Zhan, De-Chuan and Ye, Han-Jia},",
        "  journal={arXiv preprint arXiv:2406.02539},",
        "  year={2024}",
        "}",
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Build the card (see `build_model_card`) and save it as ``README.md`` in ``output_dir``."""
    path = Path(output_dir) / "README.md"
    build_model_card(**kwargs).save(str(path))
    return path


__all__ = [
    "build_model_card",
    "write_model_card",
    "eval_results_from",
    "usage_snippets",
    "quantized_snippet",
    "tested_versions",
    "documentation_url",
]
