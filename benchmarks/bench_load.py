"""Bounded load test on 127.0.0.1: `parrot-chat` (Gradio) or vLLM's OpenAI server, each serving a tiny saved Parrot.

Every round sends `--requests` requests from `--clients` concurrent clients, a quarter of them malformed. A good request
must get the transformers model's greedy answer for its prompt; a bad one a clear error (for the chat: the error shown
in the chat, or HTTP 4xx for a broken HTTP body; for vLLM: HTTP 4xx with a message). After the rounds the server must
still answer, and the RSS of the server's process tree must not grow between the end of the first and the last round
by more than `--rss_growth_mib`.

    python benchmarks/bench_load.py --target chat                  # main venv (gradio, gradio_client)
    .venv-h4vllm/bin/python benchmarks/bench_load.py --target vllm   # a venv with vLLM
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "load_test.json"
QUESTIONS = [
    "What colour is the circle?",
    "圆圈是什么颜色？",
    "De que cor é o círculo?",
    "ما لون الدائرة؟",
    "Dairenin rengi nedir?",
    "Какого цвета круг?",
]
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
# vLLM's CPU attention takes LLM head sizes 32, 64, ...: hidden 64 with 2 heads
VLLM_TEXT_CONFIG = {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 128}
STARTUP_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image(seed: int):
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (28, 40, 3), generator=generator, dtype=torch.uint8).numpy(), "RGB")


def _tree_rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _inert(text: str) -> str:
    """Special-token text as parrot-chat sends it: a zero-width space after the first character."""
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"):
        text = text.replace(token, token[0] + "\u200b" + token[1:])
    return text


@torch.no_grad()
def greedy(model, processor, question: str, image, max_new_tokens: int) -> tuple[str, list[int]]:
    """(text, token ids) of transformers' greedy answer to one single-turn ChatML prompt written by hand."""
    prompt = (
        SYSTEM
        + "<|im_start|>user\n"
        + ("<image>\n" if image is not None else "")
        + question
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=[prompt], images=[[image]] if image is not None else None, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    return processor.tokenizer.decode(ids, skip_special_tokens=True), ids


def save_model(directory: Path, target: str):
    from transformers_parrot.tiny import tiny_model

    overrides = {"text_config": VLLM_TEXT_CONFIG} if target == "vllm" else {}
    model, processor = tiny_model(seed=0, **overrides)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():  # unit-scale embeddings and router: answers depend visibly on the prompt and image
        for weight in (model.get_input_embeddings().weight, model.model.moe.gate.weight):
            weight.copy_(torch.randn(weight.shape, generator=generator))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model.eval(), processor


def plan(n_requests: int, bad_fraction: float, target: str) -> list[dict]:
    """The requests of one round: good ones (question, image seed or None) and bad ones (a kind)."""
    bad_kinds = (
        ["bad_image", "bad_json", "empty_question", "two_images"]
        if target == "chat"
        else ["bad_image", "bad_json", "image_tag_without_image", "wrong_role", "too_many_images"]
    )
    n_bad = round(n_requests * bad_fraction)
    requests = []
    for i in range(n_requests):
        if i % round(1 / bad_fraction) == 0 and sum(r["bad"] is not None for r in requests) < n_bad:
            requests.append({"bad": bad_kinds[len([r for r in requests if r["bad"]]) % len(bad_kinds)]})
        else:
            requests.append(
                {"bad": None, "question": QUESTIONS[i % len(QUESTIONS)], "image": None if i % 5 == 4 else i % 7}
            )
    return requests


# ---------------------------------------------------------------------------------------------- parrot-chat
class ChatTarget:
    def __init__(self, directory: Path, max_new_tokens: int, port: int):
        self.url = f"http://127.0.0.1:{port}/"
        self.max_new_tokens = max_new_tokens
        self.uploads = directory / "uploads"
        self.uploads.mkdir()
        (self.uploads / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        script = Path(sys.executable).with_name("parrot-chat")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "transformers_parrot.chat.cli"]
        self.command = command + [
            "--model",
            str(directory),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--concurrency",
            "4",
        ]
        self.env = {"GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            return response.status == 200

    def image_file(self, seed: int) -> str:
        path = self.uploads / f"{seed}.png"
        if not path.exists():
            _image(seed).save(path)
        return str(path)

    def send(self, request: dict) -> dict:
        """{"ok": answer text} or {"error": message, "status": HTTP status or None}."""
        from gradio_client import Client, handle_file

        if request["bad"] == "bad_json":
            body = b'{"data": [ {"text": "unterminated'
            http = urllib.request.Request(
                self.url + "gradio_api/queue/join",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(http, timeout=60) as response:
                    return {"error": response.read().decode()[:200], "status": response.status}
            except urllib.error.HTTPError as err:
                return {"error": err.read().decode("utf-8", "replace")[:300], "status": err.code}
        files = {
            "bad_image": [str(self.uploads / "broken.png")],
            "two_images": [self.image_file(1), self.image_file(2)],
        }
        question = "" if request["bad"] == "empty_question" else request.get("question", "What is this?")
        paths = files.get(request["bad"]) or (
            [self.image_file(request["image"])] if request.get("image") is not None else []
        )
        client = Client(self.url, verbose=False, download_files=False)
        try:
            job = client.submit(
                {"text": question, "files": [handle_file(p) for p in paths]},
                self.max_new_tokens,
                0.0,
                1.0,
                api_name="/respond",
            )
            job.result(timeout=300)
            # the last update that carries the chat (the final one only re-enables the input box)
            chat = next(out[0] for out in reversed(job.outputs()) if isinstance(out[0], list) and out[0])
        finally:
            client.close()
        reply = chat[-1]["content"]  # HTML, as a string or as a list of text parts
        reply = reply if isinstance(reply, str) else "".join(part.get("text", "") for part in reply)
        error = re.search(r'class="parrot-error"[^>]*>⚠️ (.*?)</div>', reply, re.S)
        if error:
            return {"error": html.unescape(error.group(1)), "status": None}
        text = re.search(r'class="parrot-text"[^>]*>(.*?)</div>', reply, re.S)
        return {"ok": html.unescape(text.group(1)) if text else reply}

    def expected(self, model, processor, request: dict) -> str:
        image = _image(request["image"]) if request["image"] is not None else None
        return greedy(model, processor, _inert(request["question"]), image, self.max_new_tokens)[0]

    @staticmethod
    def clear(result: dict) -> bool:
        if result.get("status") is not None:
            return 400 <= result["status"] < 500 and bool(result["error"].strip())
        return bool(result.get("error"))


# ---------------------------------------------------------------------------------------------- vLLM server
def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class VllmTarget:
    def __init__(self, directory: Path, max_new_tokens: int, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.model = str(directory)
        self.max_new_tokens = max_new_tokens
        self.command = [
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
            "512",
            "--kv-cache-memory-bytes",
            str(256 << 20),
            "--limit-mm-per-prompt",
            '{"image": 1}',
        ]
        self.env = {}

    def ready(self) -> bool:
        with urllib.request.urlopen(self.base + "/v1/models", timeout=5) as response:
            return response.status == 200

    def _post(self, body: bytes) -> dict:
        http = urllib.request.Request(
            self.base + "/v1/chat/completions", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(http, timeout=300) as response:
                choice = json.load(response)["choices"][0]
                return {"ok": choice["message"]["content"], "ids": choice.get("token_ids")}
        except urllib.error.HTTPError as err:
            raw = err.read().decode("utf-8", "replace")
            try:
                message = json.loads(raw).get("error", {}).get("message", raw)
            except (ValueError, AttributeError):
                message = raw
            return {"error": str(message)[:300], "status": err.code}

    def send(self, request: dict) -> dict:
        bad = request["bad"]
        if bad == "bad_json":
            return self._post(b'{"model": "x", "messages": [ {"role": "user", "content": "unterminated')
        question = request.get("question", "What is this?")
        parts = []
        if bad == "bad_image":
            parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]
        elif bad == "too_many_images":
            parts = [{"type": "image_url", "image_url": {"url": _data_url(_image(s))}} for s in (1, 2)]
        elif bad == "image_tag_without_image":
            question = "<image>\n" + question
        elif request.get("image") is not None:
            parts = [{"type": "image_url", "image_url": {"url": _data_url(_image(request["image"]))}}]
        role = "wizard" if bad == "wrong_role" else "user"
        payload = {
            "model": self.model,
            "messages": [{"role": role, "content": [*parts, {"type": "text", "text": question}]}],
            "temperature": 0.0,
            "max_tokens": self.max_new_tokens,
            "return_token_ids": True,
        }
        return self._post(json.dumps(payload).encode())

    def expected(self, model, processor, request: dict) -> list[int]:
        image = _image(request["image"]) if request["image"] is not None else None
        return greedy(model, processor, request["question"], image, self.max_new_tokens)[1]

    @staticmethod
    def clear(result: dict) -> bool:
        return result.get("status") is not None and 400 <= result["status"] < 500 and bool(result["error"].strip())


# ---------------------------------------------------------------------------------------------- the run
def run(
    target_name: str,
    n_requests: int,
    n_clients: int,
    rounds: int,
    bad_fraction: float,
    max_new_tokens: int,
    rss_growth_mib: float,
) -> dict:
    directory = Path(tempfile.mkdtemp(prefix=f"parrot-load-{target_name}-"))
    model, processor = save_model(directory, target_name)
    port = _free_port()
    target = (ChatTarget if target_name == "chat" else VllmTarget)(directory, max_new_tokens, port)
    log = open(directory / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **target.env}
    server = subprocess.Popen(target.command, stdout=log, stderr=subprocess.STDOUT, env=env)
    started = time.monotonic()
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {server.returncode}: {(directory / 'server.log').read_text()[-2000:]}"
                )
            try:
                if target.ready():
                    break
            except OSError:
                pass
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                raise RuntimeError("the server did not start")
            time.sleep(1)
        startup_s = time.monotonic() - started
        requests = plan(n_requests, bad_fraction, target_name)
        expected = [None if r["bad"] else target.expected(model, processor, r) for r in requests]
        round_results, failures = [], []
        for round_index in range(rounds):
            t0 = time.monotonic()
            with ThreadPoolExecutor(n_clients) as pool:
                results = list(pool.map(target.send, requests))
            seconds = time.monotonic() - t0
            good_right = bad_clear = 0
            for request, want, got in zip(requests, expected, results):
                if request["bad"] is None:
                    right = got.get("ids", got.get("ok")) == want if target_name == "vllm" else got.get("ok") == want
                    good_right += right
                    if not right:
                        failures.append(
                            {"round": round_index, "request": request, "expected": want, "got": str(got)[:300]}
                        )
                else:
                    clear = target.clear(got)
                    bad_clear += clear
                    if not clear:
                        failures.append({"round": round_index, "request": request, "got": str(got)[:300]})
            round_results.append(
                {
                    "seconds": round(seconds, 2),
                    "good": sum(r["bad"] is None for r in requests),
                    "good_answered_correctly": good_right,
                    "bad": sum(bool(r["bad"]) for r in requests),
                    "bad_clear_error": bad_clear,
                    "rss_mib_after": round(_tree_rss_mib(server.pid), 1),
                    "errors_seen": sorted({str(g.get("error"))[:120] for g in results if g.get("error")}),
                }
            )
        after = target.send({"bad": None, "question": QUESTIONS[0], "image": 3})
        still_answers = (
            after.get("ids", after.get("ok"))
            == target.expected(model, processor, {"question": QUESTIONS[0], "image": 3})
            if target_name == "vllm"
            else after.get("ok") == target.expected(model, processor, {"question": QUESTIONS[0], "image": 3})
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    growth = round_results[-1]["rss_mib_after"] - round_results[0]["rss_mib_after"]
    passed = not failures and still_answers and growth <= rss_growth_mib
    return {
        "target": target_name,
        "requests_per_round": n_requests,
        "clients": n_clients,
        "rounds": rounds,
        "bad_fraction": bad_fraction,
        "max_new_tokens": max_new_tokens,
        "startup_s": round(startup_s, 1),
        "round_results": round_results,
        "still_answers_afterwards": still_answers,
        "rss_growth_mib": round(growth, 1),
        "rss_growth_threshold_mib": rss_growth_mib,
        "failures": failures[:10],
        "passed": passed,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_load.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=["chat", "vllm"], required=True)
    parser.add_argument("--requests", type=int, default=64, help="requests per round (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; RSS is compared between the first and last")
    parser.add_argument("--bad_fraction", type=float, default=0.25, help="share of malformed requests")
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument(
        "--rss_growth_mib",
        type=float,
        default=64.0,
        help="largest allowed RSS growth of the server tree between rounds (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"JSON file to merge the result into under the target's name (e.g. {RESULTS})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.requests, args.clients, args.rounds, args.max_new_tokens) < 1 or not 0 < args.bad_fraction < 1:
        parser.error("--requests, --clients, --rounds and --max_new_tokens must be >= 1, --bad_fraction in (0, 1)")
    result = run(
        args.target,
        args.requests,
        args.clients,
        args.rounds,
        args.bad_fraction,
        args.max_new_tokens,
        args.rss_growth_mib,
    )
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.output is not None:
        merged = json.loads(args.output.read_text()) if args.output.is_file() else {}
        merged[args.target] = result
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
