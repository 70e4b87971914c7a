"""The `parrot-chat` page (Gradio): a multimodal chat whose answers stream token by token, each followed by the
routing weights of its image, plus one-click examples in six languages and a side-by-side language comparison.

Every request is answered in the chat, bad input included (the message names the problem), so the page keeps
working. Generation runs in the backend's worker thread; the Gradio queue serves `concurrency` requests at once.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape

import gradio as gr
from transformers.utils.logging import get_logger

from ..languages import LANGUAGE_NAMES, LANGUAGES, RTL_LANGUAGES, example_questions
from .backend import (
    DEFAULT_CONCURRENCY,
    Backend,
    ChatInputError,
    LocalBackend,
    Settings,
    Turn,
    check_request,
    load_image,
)
from .charts import answer_routing_html, comparison_html
from .examples import bundled_image_path, translations

logger = get_logger(__name__)

SESSION_WAIT_S = 30.0  # how long a new request waits for the stopped previous one of the same tab to finish
CSS = """
.parrot-text { white-space: pre-wrap; unicode-bidi: plaintext; text-align: start; }
.parrot-error { color: #c92a2a; white-space: pre-wrap; }
.parrot-note { opacity: 0.7; font-size: 0.85em; }
.parrot-routing { margin-top: 0.6em; }
.parrot-routing-title { font-size: 0.8em; opacity: 0.75; margin-bottom: 0.2em; }
.parrot-compare { display: flex; flex-wrap: wrap; gap: 14px; }
.parrot-compare-cell { display: flex; flex-direction: column; align-items: center; }
.parrot-compare-lang { font-weight: 600; }
.parrot-compare-question { font-size: 0.8em; max-width: 150px; text-align: center; }
textarea { unicode-bidi: plaintext; text-align: start; }
"""


def _text(text: str, cls: str = "parrot-text") -> str:
    return f'<div class="{cls}" dir="auto">{escape(text)}</div>'


def render(history: list[Turn]) -> list[dict]:
    """Chatbot messages of the conversation: the image and question, then the answer (or the error)."""
    messages: list[dict] = []
    for turn in history:
        question = turn.question or "(empty question)"
        if turn.image is not None and turn.error is None:
            messages.append({"role": "user", "content": {"path": turn.image}})
        elif turn.image is not None:
            question = f"📎 {os.path.basename(turn.image)}\n{question}"
        messages.append({"role": "user", "content": _text(question)})
        if turn.error is not None:
            messages.append({"role": "assistant", "content": _text(f"⚠️ {turn.error}", "parrot-error")})
        elif turn.answer is None:
            messages.append({"role": "assistant", "content": _text("…")})
        else:
            parts = [_text(turn.answer or ("(stopped)" if turn.stopped else "(empty answer)"))]
            if turn.stopped:
                parts.append(_text("stopped", "parrot-note"))
            if turn.note:
                parts.append(_text(turn.note, "parrot-note"))
            if turn.routing is not None:
                parts.append(answer_routing_html(turn.routing))
            messages.append({"role": "assistant", "content": "".join(parts)})
    return messages


def _script_language(text: str) -> str:
    """A guess of which of the six languages `text` is in, from its first letter's script (Latin → en)."""
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            if name.startswith("CJK"):
                return "zh"
            if name.startswith("ARABIC"):
                return "ar"
            if name.startswith("CYRILLIC"):
                return "ru"
            return "en"
    return "en"


class ChatApp:
    """The page's callbacks around a `Backend` (testable without a browser) and `build()` for the Blocks."""

    def __init__(self, backend: Backend, notice: str | None = None):
        self.backend = backend
        self.notice = notice
        self.example_image = bundled_image_path()
        self._stops: dict[str, threading.Event] = {}
        self._turns: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextmanager
    def turn(self, session: str):
        """One request of a tab at a time: a new one (an example clicked mid-answer) stops the running one and
        waits for it to finish, so their updates of the chat cannot interleave."""
        with self._lock:
            lock = self._turns.setdefault(session, threading.Lock())
        self.stop(session)
        acquired = lock.acquire(timeout=SESSION_WAIT_S)
        try:
            yield
        finally:
            if acquired:
                lock.release()

    def _new_stop(self, session: str) -> threading.Event:
        """A fresh stop event for `session`; a generation still running in the same tab is stopped."""
        with self._lock:
            previous = self._stops.get(session)
            if previous is not None:
                previous.set()
            self._stops[session] = event = threading.Event()
        return event

    def stop(self, session: str) -> None:
        with self._lock:
            event = self._stops.get(session)
        if event is not None:
            event.set()

    def forget(self, session: str) -> None:
        """A closed tab: stop its generation and drop its bookkeeping."""
        self.stop(session)
        with self._lock:
            self._stops.pop(session, None)
            self._turns.pop(session, None)

    def answer(
        self, history: list[Turn], question: str | None, images: list[str], settings: Settings, session: str = ""
    ) -> Iterator[list[Turn]]:
        """Yield the conversation as the new turn's answer grows; any failure ends as the turn's error."""
        turn = Turn(question=(question or "").strip(), image=images[0] if images else None)
        history = [*history, turn]
        try:
            turn.question = check_request(history[:-1], question, images, self.backend.max_images)
            if turn.image is not None:
                load_image(turn.image)
            stop = self._new_stop(session)
            yield history
            for reply in self.backend.stream(history[:-1], Turn(turn.question, turn.image), settings, stop):
                turn.answer, turn.routing, turn.stopped = reply.text, reply.routing, reply.stopped
                turn.note = reply.note
                yield history
        except ChatInputError as err:
            turn.answer, turn.error = None, str(err)
        except Exception as err:  # the page must survive anything the model does
            logger.exception("parrot-chat: generation failed")
            turn.answer, turn.error = None, f"Generation failed: {type(err).__name__}: {err}"
        yield history

    def compare(self, history: list[Turn], questions: dict[str, str]) -> str:
        """HTML of the latest image's routing for each non-empty question, side by side."""
        images = [turn.image for turn in history if turn.ok and turn.image is not None]
        if not isinstance(self.backend, LocalBackend) or not self.backend.supports_routing:
            return _text("Routing is only available for a model loaded in this process (--model).", "parrot-error")
        if not images:
            return _text("Ask about an image first: the comparison routes the chat's image.", "parrot-error")
        rows = {lang: q.strip() for lang, q in questions.items() if q and q.strip()}
        if not rows:
            return _text("Type the question in at least one language.", "parrot-error")
        try:
            weights = self.backend.compare(images[-1], list(rows.values()))
        except Exception as err:
            logger.exception("parrot-chat: routing comparison failed")
            return _text(f"Routing failed: {type(err).__name__}: {err}", "parrot-error")
        return comparison_html({lang: (q, w) for (lang, q), w in zip(rows.items(), weights)}, RTL_LANGUAGES)

    def prefill(self, history: list[Turn]) -> list[str] | None:
        """The comparison fields for the last answered question: its six translations when known, else the
        question alone in the field of its script's language."""
        done = [turn for turn in history if turn.ok]
        if not done:
            return None
        question = done[-1].question
        known = translations(question)
        if known is not None:
            return [known[lang] for lang in LANGUAGES]
        guess = _script_language(question)
        return [question if lang == guess else "" for lang in LANGUAGES]

    # ------------------------------------------------------------------ the page
    def header(self) -> str:
        backend = self.backend
        lines = [f"## Parrot chat · `{escape(backend.name)}`"]
        if isinstance(backend, LocalBackend):
            lines.append(
                f"{backend.num_experts} experts, context {backend.context_length} tokens, "
                f"up to {backend.max_images} image(s) per conversation. Under each answer: how the "
                "multilingual MoE routed the image for that prompt."
            )
            if not backend.supports_routing:
                lines.append("This checkpoint bypasses its MoE (`use_moe=False`): no routing to show.")
        else:
            lines.append(
                "Answers come from a vLLM OpenAI-compatible server. **Routing charts are not available in "
                "this mode**: the OpenAI API does not return the MoE's routing weights (run "
                "`parrot-chat --model PATH` to see them)."
            )
        if self.notice:
            lines.append(self.notice)
        return "\n\n".join(lines)

    def build(self) -> gr.Blocks:
        local = isinstance(self.backend, LocalBackend) and self.backend.supports_routing
        with gr.Blocks(title="Parrot chat") as demo:
            history = gr.State([])
            gr.Markdown(self.header(), elem_id="parrot-header")
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        elem_id="parrot-chatbot",
                        height=560,
                        label="Chat",
                        allow_tags=False,
                        feedback_options=None,
                        buttons=["copy"],
                    )
                    box = gr.MultimodalTextbox(
                        elem_id="parrot-input",
                        sources=["upload"],
                        file_count="multiple",
                        placeholder="Ask in any language; attach or paste an image (📎)",
                        show_label=False,
                    )
                    with gr.Row():
                        stop_button = gr.Button("Stop", variant="stop", elem_id="parrot-stop")
                        clear_button = gr.Button("Clear chat", elem_id="parrot-clear")
                with gr.Column(scale=1):
                    with gr.Accordion("Generation settings", open=True):
                        max_new = gr.Slider(
                            1, 2048, value=256, step=1, label="Max new tokens", elem_id="parrot-max-new-tokens"
                        )
                        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (when sampling)")
                    gr.Markdown("**Examples**: the bundled image, one question per language (each starts a new chat)")
                    example_buttons = []
                    for lang, question in example_questions().items():
                        button = gr.Button(
                            f"{lang} · {question}",
                            size="sm",
                            elem_id=f"parrot-example-{lang}",
                            elem_classes=["parrot-example"],
                        )
                        example_buttons.append((button, question))
            with gr.Accordion(
                "Compare languages: this image's routing for the same question in six languages",
                open=False,
                visible=local,
                elem_id="parrot-compare-accordion",
            ):
                gr.Markdown("The example questions come translated; for your own question, type its translations.")
                with gr.Row():
                    fields = [
                        gr.Textbox(
                            label=f"{lang} · {LANGUAGE_NAMES[lang]}",
                            rtl=lang in RTL_LANGUAGES,
                            elem_id=f"parrot-compare-{lang}",
                        )
                        for lang in LANGUAGES
                    ]
                compare_button = gr.Button("Route in all languages", elem_id="parrot-compare-button")
                compare_out = gr.HTML(elem_id="parrot-compare-output")

            def settings_of(n, t, p) -> Settings:
                return Settings(max_new_tokens=int(n), temperature=float(t), top_p=float(p))

            def stream(turns, question, files, settings, session):
                with self.turn(session):
                    for turns_now in self.answer(turns, question, files, settings, session):
                        yield render(turns_now), turns_now, gr.MultimodalTextbox(value=None, interactive=False)
                    yield gr.skip(), gr.skip(), gr.MultimodalTextbox(interactive=True)

            def respond(message, turns, n, t, p, request: gr.Request):
                message = message or {}
                yield from stream(
                    turns,
                    message.get("text"),
                    list(message.get("files") or []),
                    settings_of(n, t, p),
                    request.session_hash or "",
                )

            def run_example(question):
                def handler(n, t, p, request: gr.Request):
                    yield from stream(
                        [], question, [self.example_image], settings_of(n, t, p), request.session_hash or ""
                    )

                return handler

            def fill(turns):
                values = self.prefill(turns)
                return [gr.skip()] * len(fields) if values is None else values

            outputs = [chatbot, history, box]
            settings = [max_new, temperature, top_p]
            events = [box.submit(respond, [box, history, *settings], outputs, show_progress="hidden")]
            for button, question in example_buttons:
                events.append(button.click(run_example(question), settings, outputs, show_progress="hidden"))
            for event in events:
                event.then(fill, [history], fields, queue=False)

            def stop(request: gr.Request):
                self.stop(request.session_hash or "")

            def clear(request: gr.Request):
                self.stop(request.session_hash or "")
                return [], [], gr.MultimodalTextbox(value=None, interactive=True), ""

            def closed(request: gr.Request):
                self.forget(request.session_hash or "")

            demo.unload(closed)
            stop_button.click(stop, None, None, queue=False)
            clear_button.click(clear, None, [chatbot, history, box, compare_out], queue=False, cancels=events)
            compare_button.click(
                lambda turns, *qs: self.compare(turns, dict(zip(LANGUAGES, qs))), [history, *fields], compare_out
            )
        return demo

    def launch(
        self, host: str = "127.0.0.1", port: int | None = None, concurrency: int = DEFAULT_CONCURRENCY, **kwargs
    ):
        """Serve the page (blocking unless `prevent_thread_lock=True`); returns what `Blocks.launch` returns."""
        demo = self.build()
        demo.queue(default_concurrency_limit=concurrency)
        kwargs.setdefault("ssr_mode", False)
        return demo.launch(
            server_name=host,
            server_port=port,
            css=CSS,
            theme=_theme(),
            allowed_paths=[os.path.dirname(self.example_image)],
            footer_links=[],
            **kwargs,
        )


def _theme():
    """Gradio's default look with system fonts (the default theme fetches web fonts, unavailable offline)."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


__all__ = ["CSS", "ChatApp", "render"]
