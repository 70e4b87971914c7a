"""What `parrot-chat` answers with, free of any UI: input checks, the conversation, and two backends.

`LocalBackend` runs a Parrot checkpoint in this process (`generate` in a worker thread, streamed through
transformers' `TextIteratorStreamer`, the image's routing weights per answer); `ServerBackend` talks to a running
vLLM OpenAI-compatible server (`/v1/chat/completions` with server-sent events; no routing).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from transformers.utils.logging import get_logger

from ..cli_utils import torch_dtype as resolve_dtype

logger = get_logger(__name__)

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # an upload larger than this is refused before decoding
MAX_IMAGE_PIXELS = 36_000_000  # width × height; refused from the header, before the pixels are decoded
DEFAULT_MAX_IMAGES = 1  # Parrot is trained with one image per conversation
DEFAULT_CONCURRENCY = 2  # requests the page answers at once (each generates in its own thread)
STREAM_TIMEOUT_S = 600.0  # longest wait for the next streamed token before the answer is given up


class ChatInputError(ValueError):
    """A request the chat cannot answer (bad image, empty question, too long, ...): shown to the user as is."""


@dataclass
class Turn:
    """One exchange. `image` is a file path; `answer` is None while pending or when the turn failed (`error`)."""

    question: str
    image: str | None = None
    answer: str | None = None
    error: str | None = None
    routing: list[float] | None = None
    stopped: bool = False
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.answer is not None


@dataclass
class Settings:
    """Generation settings of one request; `temperature == 0` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    def check(self) -> None:
        """Raise ChatInputError naming the first setting generation cannot use."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ChatInputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ChatInputError(f"temperature must be a finite number >= 0, got {self.temperature!r}.")
        if self.temperature > 0 and not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ChatInputError(f"top_p must be in (0, 1] when sampling, got {self.top_p!r}.")

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": None}


@dataclass
class Reply:
    """A streamed answer so far; the last one has `done=True` and, for local models with an image, `routing`."""

    text: str
    done: bool = False
    routing: list[float] | None = None
    stopped: bool = False
    note: str | None = None


def load_image(path: str):
    """Open and fully decode an uploaded image as RGB, or raise ChatInputError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise ChatInputError(f"The uploaded file {name!r} cannot be read ({err.strerror}).") from None
    if not os.path.isfile(path):
        raise ChatInputError(f"The upload {name!r} cannot be read: it is not a file.")
    if size > MAX_IMAGE_BYTES:
        raise ChatInputError(
            f"The image {name!r} is {size / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES / 2**20:.0f} MB."
        )
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ChatInputError(
                    f"The image {name!r} is {width}×{height} pixels; the limit is "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels."
                )
            if width == 0 or height == 0:
                raise ChatInputError(f"The image {name!r} is empty ({width}×{height}).")
            return image.convert("RGB")
    except ChatInputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ChatInputError(f"The file {name!r} is not an image this app can read ({err}).") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ChatInputError(f"The image {name!r} is damaged and cannot be decoded ({err}).") from None


def check_request(history: list[Turn], question: str | None, images: list[str], max_images: int) -> str:
    """The stripped question, after checking the question and the number of images (new and in the chat)."""
    question = (question or "").strip()
    if not question:
        raise ChatInputError("Please type a question" + (" about the image." if images else "."))
    earlier = sum(turn.image is not None for turn in history if turn.ok)
    if len(images) + earlier > max_images:
        if len(images) > max_images:
            raise ChatInputError(
                f"{len(images)} images were attached; this model takes at most {max_images} "
                f"image{'s' if max_images > 1 else ''} per conversation."
            )
        raise ChatInputError(
            f"This conversation already has {earlier} image{'s' if earlier > 1 else ''}, and "
            f"this model takes at most {max_images}. Clear the chat to ask about a new image."
        )
    return question


class Backend(Protocol):
    """What the page needs from whatever answers."""

    name: str
    max_images: int
    supports_routing: bool

    def stream(
        self, history: list[Turn], turn: Turn, settings: Settings, stop: threading.Event
    ) -> Iterator[Reply]: ...


def _completed(history: list[Turn]) -> list[Turn]:
    return [turn for turn in history if turn.ok]


class _StopOnEvent:
    """A stopping criterion that ends generation when `event` is set (the Stop button, a closed tab)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class LocalBackend:
    """A Parrot model and processor in this process.

    `stream` renders the conversation with the processor's chat template, runs `generate` in a worker thread and
    yields the answer as it grows; the final reply carries the softmax routing weights (num_experts,) of the
    conversation's image for exactly the prompt the answer was generated from.
    """

    supports_routing = True

    def __init__(self, model, processor, name: str = "Parrot", max_images: int = DEFAULT_MAX_IMAGES):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.max_images = max_images
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.num_experts = int(model.config.num_experts)
        self.supports_routing = bool(getattr(model.config, "use_moe", True))
        tokenizer = processor.tokenizer
        self._special = sorted(set(tokenizer.all_special_tokens) | {processor.image_token}, key=len, reverse=True)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        max_images: int = DEFAULT_MAX_IMAGES,
        quantization_config=None,
    ) -> LocalBackend:
        """Load any folder or Hub id this package (or `parrot-convert`) saved; `quantization_config` (e.g. a
        `BitsAndBytesConfig`) loads it quantized, placed by `device_map` (the vision tower and MoE stay unquantized)."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch_dtype = resolve_dtype(dtype)
        placement = {}
        if device == "auto":
            placement = {"device_map": "auto"} if torch.cuda.is_available() else {}
        if quantization_config is not None:  # quantized weights are placed at loading, never moved afterwards
            placement = {
                "device_map": placement.get("device_map", "cpu") if device == "auto" else {"": device},
                "quantization_config": quantization_config,
            }
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **placement
        )
        if device != "auto" and quantization_config is None:
            model = model.to(device)
        return cls(model, processor, name=os.path.basename(os.path.normpath(path)) or path, max_images=max_images)

    def _clean(self, text: str) -> str:
        """User text with the model's special tokens (`<image>`, `<|im_end|>`, ...) made inert: a zero-width
        space after their first character, so they are tokenized as plain text, not as control tokens."""
        for token in self._special:
            text = text.replace(token, token[0] + "\u200b" + token[1:])
        return text

    def messages(self, turns: list[Turn]) -> tuple[list[dict], list[str]]:
        """Chat-template messages of `turns` (the last one unanswered) and the image paths in prompt order."""
        messages, images = [], []
        for turn in turns:
            content = [{"type": "text", "text": self._clean(turn.question)}]
            if turn.image is not None:
                content.insert(0, {"type": "image"})
                images.append(turn.image)
            messages.append({"role": "user", "content": content})
            if turn.answer is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": self._clean(turn.answer)}]})
        return messages, images

    def prepare(self, turns: list[Turn]):
        """Processor outputs on the model's device for the prompt of `turns`; ChatInputError when it cannot fit."""
        messages, paths = self.messages(turns)
        images = [load_image(path) for path in paths]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[images] if images else None, return_tensors="pt")
        length = inputs["input_ids"].shape[1]
        if length >= self.context_length:
            raise ChatInputError(
                f"The prompt is {length} tokens (image included), over this model's context of "
                f"{self.context_length} tokens. Shorten the question or clear the chat."
            )
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def routing(self, inputs) -> list[float] | None:
        """Softmax routing weights (num_experts,) of the prompt's image, None without image or MoE."""
        import torch

        if "pixel_values" not in inputs or not self.supports_routing:
            return None
        with torch.no_grad():
            logits = self.model(**inputs, output_router_logits=True, logits_to_keep=1).router_logits
        return logits[-1].float().softmax(-1).cpu().tolist()

    def compare(self, image: str, questions: list[str]) -> list[list[float]]:
        """Routing weights (len(questions), num_experts) of one image for each question, single-turn prompts:
        `transformers_parrot.routing.routing_weights`."""
        from ..routing import routing_weights

        picture = load_image(image)
        cleaned = [self._clean(q) for q in questions]
        return routing_weights(self.model, self.processor, [picture] * len(cleaned), cleaned).tolist()

    def stream(self, history: list[Turn], turn: Turn, settings: Settings, stop: threading.Event) -> Iterator[Reply]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        settings.check()
        inputs = self.prepare(_completed(history) + [turn])
        room = self.context_length - inputs["input_ids"].shape[1]
        max_new = max(1, min(int(settings.max_new_tokens), room))
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S
        )
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.model.generate(
                    **inputs,
                    streamer=streamer,
                    max_new_tokens=max_new,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                    **settings.generate_kwargs(),
                )
            except BaseException as err:  # reported to the page by the consuming thread
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=work, name="parrot-chat-generate", daemon=True)
        worker.start()
        text, finished = "", False
        try:
            for piece in streamer:
                text += piece
                if piece:
                    yield Reply(text)
            finished = True
        finally:
            if not finished:  # the page went away, or no token came within STREAM_TIMEOUT_S
                stop.set()
            worker.join()
        if failure:
            raise failure[0]
        note = None
        if max_new < settings.max_new_tokens:
            note = f"answer limited to {max_new} new tokens by the context length ({self.context_length})"
        yield Reply(text, done=True, routing=self.routing(inputs), stopped=stop.is_set(), note=note)


class ServerBackend:
    """A vLLM (or any OpenAI-compatible) server: `POST {url}/v1/chat/completions` with `stream: true`.

    Images travel as PNG data URLs. The OpenAI API has no routing weights, so there are no routing charts.
    """

    supports_routing = False

    def __init__(
        self,
        url: str,
        model: str | None = None,
        max_images: int = DEFAULT_MAX_IMAGES,
        timeout: float = STREAM_TIMEOUT_S,
    ):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.model = model
        self.max_images = max_images
        self.timeout = timeout
        self.name = model or self.url

    def _request(self, path: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            raise ChatInputError(f"The server refused the request (HTTP {err.code}): {_error_message(err)}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ChatInputError(f"Cannot reach the server at {self.url}: {reason}") from None

    def model_id(self) -> str:
        """The served model: `--server_model`, else the first entry of `/v1/models`."""
        if self.model is None:
            with self._request("/v1/models") as response:
                models = json.load(response).get("data") or []
            if not models:
                raise ChatInputError(f"The server at {self.url} lists no model under /v1/models.")
            self.model = self.name = models[0]["id"]
        return self.model

    def messages(self, turns: list[Turn]) -> list[dict]:
        """OpenAI chat messages of `turns`; each image is sent as a data URL in its own user turn."""
        messages = []
        for turn in turns:
            content: list[dict] = [{"type": "text", "text": turn.question}]
            if turn.image is not None:
                content.insert(0, {"type": "image_url", "image_url": {"url": _png_data_url(turn.image)}})
            messages.append({"role": "user", "content": content})
            if turn.answer is not None:
                messages.append({"role": "assistant", "content": turn.answer})
        return messages

    def stream(self, history: list[Turn], turn: Turn, settings: Settings, stop: threading.Event) -> Iterator[Reply]:
        settings.check()
        payload = {
            "model": self.model_id(),
            "messages": self.messages(_completed(history) + [turn]),
            "stream": True,
            "max_tokens": int(settings.max_new_tokens),
            "temperature": max(0.0, float(settings.temperature)),
        }
        if settings.temperature > 0:
            payload["top_p"] = float(settings.top_p)
        text = ""
        with self._request("/v1/chat/completions", payload) as response:
            for raw in response:
                if stop.is_set():
                    break
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ChatInputError(f"The server stopped with an error: {_message_of(chunk)}")
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        text += piece
                        yield Reply(text)
        yield Reply(text, done=True, stopped=stop.is_set())


def _png_data_url(path: str) -> str:
    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _message_of(body) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(body.get("message", error))
    return str(body)


def _error_message(err: urllib.error.HTTPError) -> str:
    raw = err.read().decode("utf-8", "replace")
    try:
        return _message_of(json.loads(raw))
    except ValueError:
        return raw.strip()[:500] or err.reason


__all__ = [
    "Backend",
    "ChatInputError",
    "LocalBackend",
    "Reply",
    "ServerBackend",
    "Settings",
    "Turn",
    "check_request",
    "load_image",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_IMAGES",
]
