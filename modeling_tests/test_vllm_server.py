"""Parrot behind vLLM's OpenAI-compatible server (127.0.0.1): chat completions with base64 images, streaming,
concurrent requests with the same image and different prompts, and bad requests answered with HTTP 400 while the
server keeps serving. The model routes with `moe_top_k=2`, so the sparse MoE path is also checked against
transformers. One server for the module; skipped where vLLM is not installed.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from fixtures import QUESTIONS, make_image  # noqa: E402
from vllm_parrot import LOGPROB_TOLERANCE, MAX_NEW_TOKENS, chat_prompt, hf_greedy, save_tiny_parrot  # noqa: E402

MAX_MODEL_LEN = 256
MAX_IMAGES = 2
STARTUP_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(openai client, hf model, processor, served model name) for a tiny Parrot with moe_top_k=2."""
    directory = tmp_path_factory.mktemp("parrot_server")
    model, processor = save_tiny_parrot(directory, moe_top_k=2)
    port = _free_port()
    log = open(directory / "server.log", "w")
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(directory),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--seed",
        "0",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--kv-cache-memory-bytes",
        str(256 << 20),
        "--limit-mm-per-prompt",
        f'{{"image": {MAX_IMAGES}}}',
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}: see {directory / 'server.log'}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server was not ready within {STARTUP_TIMEOUT_S} s")
                time.sleep(2)
        yield client, model, processor, str(directory)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _messages(question: str, urls: list[str]) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def _chat(server, question, urls, **kwargs):
    client, _, _, name = server
    return client.chat.completions.create(
        model=name,
        messages=_messages(question, urls),
        temperature=0.0,
        max_tokens=MAX_NEW_TOKENS,
        extra_body={"return_token_ids": True},
        **kwargs,
    )


def _assert_matches_hf(server, response, question, images) -> None:
    _, model, processor, _ = server
    _, new_ids, logprobs = hf_greedy(model, processor, chat_prompt(processor, question, len(images)), images)
    choice = response.choices[0]
    assert list(choice.token_ids) == new_ids, question
    got = [entry.logprob for entry in choice.logprobs.content]
    assert len(got) == len(new_ids)
    assert max(abs(a - b) for a, b in zip(got, logprobs)) < LOGPROB_TOLERANCE, question


def test_chat_with_base64_images_matches_transformers(server):
    image = make_image(11)
    for lang in ("zh", "ar", "zh"):
        response = _chat(server, QUESTIONS[lang], [_data_url(image)], logprobs=True)
        _assert_matches_hf(server, response, QUESTIONS[lang], [image])
    images = [make_image(12), make_image(13)]
    response = _chat(server, QUESTIONS["ru"], [_data_url(i) for i in images], logprobs=True)
    _assert_matches_hf(server, response, QUESTIONS["ru"], images)


def test_concurrent_requests_same_image_different_prompts(server):
    image = make_image(14)
    languages = ["en", "tr", "pt", "ar", "en", "zh"]
    with ThreadPoolExecutor(len(languages)) as pool:
        responses = list(
            pool.map(lambda lang: _chat(server, QUESTIONS[lang], [_data_url(image)], logprobs=True), languages)
        )
    for lang, response in zip(languages, responses):
        _assert_matches_hf(server, response, QUESTIONS[lang], [image])


def test_streaming_gives_the_same_text(server):
    url = _data_url(make_image(15))
    full = _chat(server, QUESTIONS["pt"], [url]).choices[0].message.content
    stream = _chat(server, QUESTIONS["pt"], [url], stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 1
    assert "".join(pieces) == full


def test_bad_requests_get_400_and_the_server_keeps_serving(server):
    image = make_image(16)
    with pytest.raises(openai.BadRequestError, match=f"At most {MAX_IMAGES} image"):
        _chat(server, QUESTIONS["en"], [_data_url(image)] * (MAX_IMAGES + 1))
    with pytest.raises(openai.BadRequestError, match="(?i)image"):
        _chat(server, QUESTIONS["en"], ["data:image/png;base64,bm90IGFuIGltYWdl"])
    with pytest.raises(openai.BadRequestError, match=f"maximum context length is {MAX_MODEL_LEN}"):
        _chat(server, QUESTIONS["en"] * 200, [_data_url(image)])
    with pytest.raises(openai.BadRequestError, match=r"1 <image> placeholder\(s\) but no image was given"):
        _chat(server, "<image> " + QUESTIONS["en"], [])  # a literal <image> typed in a text-only message
    response = _chat(server, QUESTIONS["en"], [_data_url(image)], logprobs=True)
    _assert_matches_hf(server, response, QUESTIONS["en"], [image])
