"""Quickstart: answer one image in six languages through `pipeline("image-text-to-text")` and show how Parrot's
MoE routes each language.

    python examples/quickstart.py                       # a tiny random Parrot, built offline in seconds
    python examples/quickstart.py --model PATH_OR_ID    # a real (converted) checkpoint, e.g. your Parrot-7B repo
    python examples/quickstart.py --train               # = parrot-demo: train a small Parrot, evaluate, plot

The tiny model is untrained: its answers are noise, the point is the whole path (processor, chat template,
routing, generation) running end to end. See `parrot-demo` for a small model trained to answer correctly.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from transformers_parrot.assets import bundled_image
from transformers_parrot.cli_utils import (
    DTYPE_CHOICES,
    check_file,
    check_model,
    first_input_error,
    torch_dtype,
)
from transformers_parrot.languages import example_questions
from transformers_parrot.quantization import (
    QuantizationSetupError,
    add_quantization_flags,
    quantization_config_from_args,
)
from transformers_parrot.routing import format_routing, routing_weights
from transformers_parrot.tiny import tiny_model

QUESTIONS = example_questions("shape")  # {language: question}, the same question in six languages


def build_parser() -> argparse.ArgumentParser:
    """Flags in underscore style (as transformers/TRL); the dashed spelling (`--max-new-tokens`) is an alias."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="path or Hub id of a Parrot checkpoint (default: a tiny offline model)")
    parser.add_argument("--image", help="image file to ask about (default: a bundled drawing)")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=24)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true")
    add_quantization_flags(parser)
    parser.add_argument("--train", action="store_true", help="run parrot-demo (its defaults) instead")
    return parser


def load_image(path: str):
    """The RGB image at `path`; ValueError naming the file when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"--image {path}: not a readable image ({e})") from None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train:
        from transformers_parrot.demo.run import main as demo_main

        raise SystemExit(demo_main([]))
    problem = first_input_error(  # every path and model checked before any model is loaded
        vars(args), {"model": check_model, "image": check_file, "quantization_config": check_file}
    )
    if problem:
        parser.error(problem)  # usage + "error: --flag VALUE: ..." on stderr, exit code 2
    try:
        image = load_image(args.image) if args.image else bundled_image()
    except ValueError as e:
        parser.error(str(e))  # usage + "error: ..." on stderr, exit code 2

    try:
        quantization = quantization_config_from_args(args, torch_dtype(args.dtype))
    except QuantizationSetupError as e:
        parser.error(str(e))
    if quantization is not None and not args.model:
        parser.error("quantization flags need --model (the tiny offline model is too narrow for bitsandbytes)")

    if args.model:
        dtype = torch_dtype(args.dtype)
        processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            args.model,
            dtype=dtype,
            trust_remote_code=args.trust_remote_code,
            quantization_config=quantization,
            device_map="auto" if torch.cuda.is_available() else ("cpu" if quantization is not None else None),
        ).eval()
    else:
        model, processor = tiny_model(seed=0)
        print("Built a tiny random Parrot offline (answers are noise; the routing and the pipeline are real).\n")

    answer = pipeline("image-text-to-text", model=model, processor=processor)
    for lang, question in QUESTIONS.items():
        messages = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
        ]
        reply = answer(text=messages, max_new_tokens=args.max_new_tokens, generate_kwargs={"do_sample": False})
        text = reply[0]["generated_text"]
        text = text[-1]["content"] if isinstance(text, list) else text
        print(f"[{lang}] {question}\n     → {text.strip()!r}")

    print("\nRouting weights of the multilingual MoE (softmax over experts, per language):")
    weights = routing_weights(model, processor, [image] * len(QUESTIONS), list(QUESTIONS.values()))
    print(format_routing(weights, list(QUESTIONS)))


if __name__ == "__main__":
    main()
