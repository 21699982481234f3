"""The API key goes only to --api-base's origin, whatever the endpoint answers."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_magics.backends.openai import OpenAIBackend
from llm_magics.errors import UsageError

KEY_ENV = "LLM_MAGICS_TEST_REDIRECT_KEY"
SECRET = "sk-redirect-test-never-leaves"


def serve(handler_cls):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers():
    seen: list[dict] = []

    class Elsewhere(BaseHTTPRequestHandler):
        """Another origin: records every request it gets, with its headers."""
        def log_message(self, *args):
            pass

        def _answer(self):
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            body = json.dumps({"data": [], "choices": [{"text": "x", "index": 0}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer()

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer()

    other = serve(Elsewhere)
    other_base = f"http://localhost:{other.server_address[1]}"   # same machine, another origin

    class Endpoint(BaseHTTPRequestHandler):
        """--api-base: redirects /v1/moved within itself, everything else to the other origin."""
        def log_message(self, *args):
            pass

        def _route(self, code):
            if self.path.startswith("/v1/same"):
                if self.headers.get("Authorization") != f"Bearer {SECRET}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"data": [{"id": "stub"}], "choices": [{"text": "ok", "index": 0}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            target = "/v1/same" + self.path[len("/v1/moved"):] if self.path.startswith("/v1/moved") \
                else other_base + self.path
            self.send_response(code)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            self._route(302)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._route(307 if "307" in self.path else 302)

    endpoint = serve(Endpoint)
    yield f"http://127.0.0.1:{endpoint.server_address[1]}", seen
    endpoint.shutdown()
    other.shutdown()


@pytest.mark.parametrize("path", ["/v1", "/v1/307"])
def test_a_redirect_to_another_origin_is_refused_before_the_key_follows(servers, monkeypatch, path):
    base, seen = servers
    monkeypatch.setenv(KEY_ENV, SECRET)
    backend = OpenAIBackend(base + path, "stub", KEY_ENV, timeout=5)
    with pytest.raises(UsageError) as caught:
        backend.post("/completions", {"model": "stub", "prompt": ["x"], "max_tokens": 1})
    message = str(caught.value)
    assert "redirected" in message and "another origin" in message and "--api-base" in message
    assert SECRET not in message
    with pytest.raises(UsageError, match="another origin"):
        backend.check()                       # a GET too
    assert seen == []                         # the other host never heard from us


def test_a_redirect_within_the_endpoint_is_followed_with_the_key(servers, monkeypatch):
    base, seen = servers
    monkeypatch.setenv(KEY_ENV, SECRET)
    backend = OpenAIBackend(base + "/v1/moved", "stub", KEY_ENV, timeout=5)
    assert backend.post("/completions", {"model": "stub"})["choices"][0]["text"] == "ok"
    assert seen == []


def test_origins_compare_scheme_host_and_port():
    from llm_magics.backends.openai import origin
    assert origin("http://Example.com/v1") == origin("http://example.com:80/other")
    assert origin("https://example.com/v1") != origin("http://example.com/v1")
    assert origin("http://example.com:8000/v1") != origin("http://example.com/v1")
    assert origin("http://example.com.evil.org/v1") != origin("http://example.com/v1")
