"""A small OpenAI-compatible HTTP server backed by a real transformers causal LM.

The API backend's tests start it as a separate process on 127.0.0.1 and talk
to it over real HTTP, so the client is exercised exactly as against vLLM or
OpenAI: `/v1/completions` (echo + logprobs, generation, stop), and
`/v1/chat/completions`. With `--key`, requests without `Authorization:
Bearer <key>` get a 401. It serves the model under the names given with
`--served` (default: stub); a request for another model gets vLLM's 404.

    python tests/openai_stub_server.py --model FOLDER [--key KEY] [--served NAME,...] [--port 0]

It prints `PORT <n>` once it listens.
"""
from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class Model:
    def __init__(self, folder: str):
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.lock = threading.Lock()

    @torch.inference_mode()
    def prompt_logprobs(self, prompt: str) -> tuple[list[int], list[str], list[float | None], list[int]]:
        encoded = self.tokenizer(prompt, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        logits = self.model(torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        values = [None] + [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]
        tokens = [self.tokenizer.decode([i]) for i in ids]
        offsets = [start for start, _ in encoded["offset_mapping"]]
        return ids, tokens, values, offsets

    @torch.inference_mode()
    def generate(self, prompt: str, max_tokens: int, stop: list[str]) -> str:
        ids = torch.tensor([self.tokenizer(prompt)["input_ids"]])
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                  do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        for s in stop:
            if s and s in text:
                text = text[:text.index(s)]
        return text


def completion(model: Model, prompt: str, body: dict) -> dict:
    max_tokens = int(body.get("max_tokens", 16))
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    text = model.generate(prompt, max_tokens, stop) if max_tokens > 0 else ""
    choice = {"text": (prompt + text) if body.get("echo") else text, "finish_reason": "length"}
    if body.get("logprobs") is not None:
        _, tokens, values, offsets = model.prompt_logprobs(prompt) if body.get("echo") else (None, [], [], [])
        choice["logprobs"] = {"tokens": tokens, "token_logprobs": values, "text_offset": offsets,
                              "top_logprobs": None}
    return choice


class Handler(BaseHTTPRequestHandler):
    model: Model
    key: str | None
    served: list[str]

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        if self.key and self.headers.get("Authorization") != f"Bearer {self.key}":
            self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return False
        return True

    def do_GET(self):
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in self.served]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        if not self._authorised():
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        if self.path.startswith("/v1/") and body.get("model") not in self.served:
            self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                       "type": "NotFoundError", "code": 404}})
            return
        with self.model.lock:
            if self.path == "/v1/completions":
                prompts = body.get("prompt", "")
                prompts = [prompts] if isinstance(prompts, str) else prompts
                choices = [{"index": i, **completion(self.model, p, body)} for i, p in enumerate(prompts)]
                tokens = sum(len(self.model.tokenizer(p)["input_ids"]) for p in prompts)
                self._send(200, {"object": "text_completion", "model": body.get("model"), "choices": choices,
                                 "usage": {"prompt_tokens": tokens, "completion_tokens": 0}})
            elif self.path == "/v1/chat/completions":
                prompt = self.model.tokenizer.apply_chat_template(body.get("messages", []), tokenize=False,
                                                                  add_generation_prompt=True)
                stop = body.get("stop") or []
                text = self.model.generate(prompt, int(body.get("max_tokens", 16)),
                                           [stop] if isinstance(stop, str) else stop)
                self._send(200, {"object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", default=None)
    parser.add_argument("--served", default="stub", help="model names it answers to, comma-separated")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    Handler.model = Model(args.model)
    Handler.key = args.key
    Handler.served = args.served.split(",")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
