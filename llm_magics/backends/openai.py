"""Any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, llama.cpp server, TGI, ...) as an ICL backend.

Scoring uses `POST {base}/completions` with `echo` and `logprobs`: the
endpoint returns the log-probability of every prompt token, and the tokens
past the query (found by their text offsets) are the label's. Generation uses
`/completions`, or `/chat/completions` with `--api-style chat`.

The key is read from the environment variable the user names; it goes into
the Authorization header and nowhere else (not the options, the run store, a
Result or an error message), and only to `--api-base`'s origin: a redirect to
another scheme, host or port is refused before the key could follow it
(urllib copies every header onto a redirected request).
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import UsageError
from .base import Backend, GenerateSettings, ScoreTable, cut_at_stop

BATCH = 16    # prompts per HTTP request
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def shown_url(url: str) -> str:
    """The URL without credentials or query string, fit to print and store."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_problem(url) -> str | None:
    """Option check for --api-base: an http(s) URL that carries no secret."""
    if url is None:
        return None
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expects an http(s) URL such as http://127.0.0.1:8000/v1, got {shown_url(str(url))!r}"
    if parts.username or parts.password or parts.query:
        return "put no key or credentials in the URL; name the environment variable holding the key with --api-key-env"
    if parts.fragment or str(url).endswith("#"):   # not echoed: it may hold a pasted secret
        return f"a URL with a '#' fragment is not an endpoint; use one such as {shown_url(str(url))}"
    return None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what the key is bound to."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the endpoint's origin; anywhere else is one UsageError."""

    def __init__(self, base: str):
        super().__init__()
        self.origin = origin(base)
        self.shown = shown_url(base)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if origin(target) != self.origin:
            scheme, host, port = origin(target)
            raise UsageError(f"the API at {self.shown} redirected ({code}) to another origin ({scheme}://{host}"
                             f"{f':{port}' if port else ''}); the key is only sent to --api-base's own host: if you "
                             "trust that address, pass it as --api-base")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def key_env_problem(name) -> str | None:
    """Option check for --api-key-env: a variable name. The value is never echoed: it may be the key itself."""
    if name is None or ENV_NAME.fullmatch(str(name)):
        return None
    return ("expects the name of the environment variable that holds the key (letters, digits and _, "
            "e.g. OPENAI_API_KEY), not the key itself")


class OpenAIBackend(Backend):
    def __init__(self, base_url: str, model: str, key_env: str | None, timeout: float = 10.0,
                 style: str = "completions"):
        super().__init__()
        self.base = base_url.rstrip("/")
        self.shown = shown_url(self.base)
        self.model = model
        self.key_env = key_env
        self.timeout = timeout
        self.style = style
        self.name = f"{model} @ {self.shown}"
        self.device = "api"
        self._opener = urllib.request.build_opener(SameOriginRedirects(self.base))

    # ---- HTTP -----------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env) if self.key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def check(self) -> None:
        """Fail fast, before a run starts, when the endpoint is down, silent or refuses the key.
        A server without `/models` still answered: that is enough."""
        try:
            self._send(urllib.request.Request(self.base + "/models", headers=self._headers()))
        except UsageError as exc:
            if "has no such endpoint" not in str(exc) and " answered " not in str(exc):
                raise

    def post(self, path: str, payload: dict) -> dict:
        return self._send(urllib.request.Request(self.base + path, data=json.dumps(payload).encode(),
                                                 method="POST", headers=self._headers()))

    def _send(self, request: urllib.request.Request) -> dict:
        where = f"the API at {self.shown}"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise UsageError(self._http_problem(exc, where, request.get_method() == "POST")) from None
        except (TimeoutError, socket.timeout):
            raise UsageError(f"{where} did not answer within {self.timeout:g} s (--api-timeout); "
                             "check that the server is up") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise UsageError(f"{where} did not answer within {self.timeout:g} s (--api-timeout); "
                                 "check that the server is up") from None
            raise UsageError(f"{where} is not reachable ({_reason(reason)}); check --api-base and that the "
                             "server is running") from None
        try:
            return json.loads(body)
        except ValueError:
            raise UsageError(f"{where} did not answer with JSON; is {self.shown} an OpenAI-compatible /v1 URL?") \
                from None

    def _http_problem(self, exc: urllib.error.HTTPError, where: str, names_model: bool) -> str:
        if exc.code in (401, 403):
            source = f"${self.key_env}" if self.key_env and os.environ.get(self.key_env) else "no key"
            return f"{where} refused the request ({exc.code}) with {source}; set the key in the environment " \
                   "variable named by --api-key-env"
        message = _error_message(exc)
        if exc.code == 404 and names_model and "model" in message.lower():
            served = self._served()
            return f"{where} does not serve the model {self.model!r}; name one it serves with --model" + \
                (f" ({', '.join(served)})" if served else "")
        if exc.code == 404:
            return f"{where} has no such endpoint ({exc.url and shown_url(exc.url)}); --api-base should end in /v1"
        return f"{where} answered {exc.code}" + (f": {message.splitlines()[0][:200]}" if message else "")

    def _served(self) -> list[str]:
        """The model names the endpoint lists, for an error message; none when it lists nothing."""
        try:
            answer = self._send(urllib.request.Request(self.base + "/models", headers=self._headers()))
            return [str(m["id"]) for m in answer.get("data", []) if isinstance(m, dict) and "id" in m][:8]
        except (UsageError, AttributeError, TypeError):
            return []

    # ---- scoring ----------------------------------------------------------------------
    def score(self, requests: Sequence[tuple[str, str]], continuations: Sequence[str], progress=None) -> ScoreTable:
        if self.style != "completions":
            raise UsageError("scoring labels needs a completions endpoint with echo and logprobs; "
                             "use --api-style completions, or drop --labels to generate")
        started = time.perf_counter()
        jobs = [(i, j, p + q, p + q + c) for i, (p, q) in enumerate(requests) for j, c in enumerate(continuations)]
        out = np.zeros((len(requests), len(continuations)))
        counts = np.zeros((len(requests), len(continuations)), dtype=np.int64)
        for first in range(0, len(jobs), BATCH):
            batch = jobs[first:first + BATCH]
            payload = {"model": self.model, "prompt": [job[3] for job in batch], "max_tokens": 1, "echo": True,
                       "logprobs": 1, "temperature": 0}
            choices = self._choices(self.post("/completions", payload), len(batch))
            for (i, j, context, full), choice in zip(batch, choices):
                out[i, j], counts[i, j] = self._continuation_logprob(choice, len(context), len(full), continuations[j])
            if progress:
                done_rows = {job[0] for job in batch if job[1] == len(continuations) - 1}
                if done_rows:
                    progress.advance(len(done_rows))
        self.usage.seconds += time.perf_counter() - started
        return ScoreTable(out, counts)   # per request: a label may split differently after each prompt

    def _choices(self, answer: dict, expected: int) -> list[dict]:
        self._count(answer)
        choices = answer.get("choices")
        if not isinstance(choices, list) or len(choices) != expected:
            raise UsageError(f"the API at {self.shown} answered without one choice per prompt")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _continuation_logprob(self, choice: dict, start: int, end: int, label: str) -> tuple[float, int]:
        logprobs = choice.get("logprobs") or {}
        offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
        if not offsets or values is None:
            raise UsageError(f"the API at {self.shown} returned no prompt logprobs (echo + logprobs); it cannot "
                             "score labels: drop --labels to generate instead")
        picked = [v for off, v in zip(offsets, values) if start <= off < end and v is not None]
        if not picked:
            raise UsageError(f"label {label.strip()!r} tokenizes to nothing at the API; pick verbalizers that are words")
        return float(sum(picked)), len(picked)

    def _count(self, answer: dict) -> None:
        usage = answer.get("usage") or {}
        self.usage.tokens += int(usage.get("prompt_tokens") or 0)
        self.usage.generated += int(usage.get("completion_tokens") or 0)

    # ---- generation -------------------------------------------------------------------
    def generate(self, requests: Sequence[tuple[str, str]], settings: GenerateSettings,
                 on_text: Callable[[int, str], None] | None = None, progress=None) -> list[str]:
        started = time.perf_counter()
        prompts = [p + q for p, q in requests]
        outputs: list[str] = []
        step = BATCH if self.style == "completions" else 1
        for first in range(0, len(prompts), step):
            texts = self._generate_batch(prompts[first:first + step], settings)
            for offset, text in enumerate(texts):
                text = cut_at_stop(text, settings.stop)
                outputs.append(text)
                if on_text:
                    on_text(first + offset, text)
            if progress:
                progress.advance(len(texts))
        self.usage.seconds += time.perf_counter() - started
        return outputs

    def _generate_batch(self, prompts: list[str], settings: GenerateSettings) -> list[str]:
        common = {"model": self.model, "max_tokens": settings.max_tokens, "temperature": settings.temperature,
                  "top_p": settings.top_p, "seed": settings.seed}
        if settings.stop:
            common["stop"] = [s for s in settings.stop if s][:4]   # the API takes at most four
        if self.style == "chat":
            answer = self.post("/chat/completions", {**common, "messages": [{"role": "user", "content": prompts[0]}]})
            choice = self._choices(answer, 1)[0]
            return [str((choice.get("message") or {}).get("content") or "")]
        choices = self._choices(self.post("/completions", {**common, "prompt": prompts}), len(prompts))
        return [str(c.get("text") or "") for c in choices]


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The error body's message: OpenAI and vLLM send {"error": {"message": ...}}, Ollama {"error": "..."}."""
    try:
        detail = json.loads(exc.read()).get("error", {})
        return str((detail.get("message") if isinstance(detail, dict) else detail) or "")
    except Exception:
        return ""


def _reason(reason) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    text = str(reason)
    return text.split("] ", 1)[-1] if text else type(reason).__name__
