"""The LLM query generator against a local server speaking OpenAI's /v1/chat/completions."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from embed_pipeline.lib.llm import ChatClient, LLMError, generate_llm_queries, parse_queries

PASSAGES = pd.DataFrame({
    "passage_id": ["brake-bleed", "chain-lube"],
    "title": ["Bleeding hydraulic brakes", "Lubricating a chain"],
    "text": ["Push mineral oil from the caliper to the lever until no bubbles remain.",
             "One drop of oil per roller, then wipe off the excess."],
})


class FakeEndpoint:
    """Answers each request with the next planned behaviour: an int status, ('sleep', s) or 'ok'."""

    def __init__(self, plan=None):
        self.plan = list(plan or [])
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                step = endpoint.plan.pop(0) if endpoint.plan else "ok"
                if isinstance(step, tuple):
                    time.sleep(step[1])
                if isinstance(step, int):
                    self.send_response(step)
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                passage = body["messages"][0]["content"].rsplit("Passage:\n", 1)[-1]
                title = passage.splitlines()[0]
                reply = f"1. how to do {title.lower()}\n2. {title.lower()} steps\n- {title.lower()} steps\n"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up, as the timeout test intends

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def endpoint():
    servers = []

    def make(plan=None):
        servers.append(FakeEndpoint(plan))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def client(url, **kwargs):
    return ChatClient(url, "tiny-llm", api_key="sk-secret-123", backoff_seconds=0.01, **kwargs)


def test_generates_queries_sends_key_and_caches_replies(endpoint, tmp_path):
    server = endpoint()
    first = client(server.url)
    pairs = generate_llm_queries(PASSAGES, first, tmp_path / "cache", queries_per_passage=2, concurrency=2)
    assert sorted(pairs["query"]) == sorted(["how to do bleeding hydraulic brakes", "bleeding hydraulic brakes steps",
                                             "how to do lubricating a chain", "lubricating a chain steps"])
    assert set(pairs["source"]) == {"synthetic"} and set(pairs["method"]) == {"llm"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in server.requests} == {"Bearer sk-secret-123"}
    assert {r["body"]["model"] for r in server.requests} == {"tiny-llm"}
    assert "sk-secret" not in repr(first)

    again = client(server.url)
    rerun = generate_llm_queries(PASSAGES, again, tmp_path / "cache", queries_per_passage=2)
    assert len(server.requests) == 2, "a re-run must be served from the cache"
    assert again.stats.cache_hits == 2 and again.stats.requests == 0
    assert rerun.equals(pairs)
    other_model = ChatClient(server.url, "another-llm", backoff_seconds=0.01)
    generate_llm_queries(PASSAGES, other_model, tmp_path / "cache", queries_per_passage=2)
    assert len(server.requests) == 4, "the model is part of the cache key"
    assert all("sk-secret" not in p.read_text() for p in (tmp_path / "cache").iterdir())


def test_retries_a_500_then_succeeds(endpoint):
    server = endpoint([500, "ok"])
    chat = client(server.url, max_retries=2)
    assert "how to do" in chat.complete("Passage:\nA title\nsome text")
    assert chat.stats.requests == 2 and chat.stats.retries == 1


def test_gives_up_after_retries_and_does_not_retry_a_401(endpoint):
    failing = endpoint([503, 503, 503])
    chat = client(failing.url, max_retries=2)
    with pytest.raises(LLMError, match="HTTP 503.*3 attempts") as info:
        chat.complete("Passage:\nx")
    assert "sk-secret" not in str(info.value)
    unauthorised = endpoint([401])
    chat = client(unauthorised.url, max_retries=3)
    with pytest.raises(LLMError, match="HTTP 401.*not retried"):
        chat.complete("Passage:\nx")
    assert len(unauthorised.requests) == 1


def test_a_slow_reply_times_out_and_is_retried(endpoint):
    server = endpoint([("sleep", 1.0), "ok"])
    chat = client(server.url, timeout_seconds=0.2, max_retries=1)
    assert "how to do" in chat.complete("Passage:\nA title\ntext")
    assert chat.stats.retries == 1
    hung = endpoint([("sleep", 1.0), ("sleep", 1.0)])
    with pytest.raises(LLMError, match="timed out|Timeout"):
        client(hung.url, timeout_seconds=0.2, max_retries=1).complete("Passage:\nx")


def test_parse_queries_strips_list_marks_and_duplicates():
    assert parse_queries('1. "oil a chain"\n\n2) Oil a chain\n* chain wax vs oil\n- fourth', 3) == ["oil a chain", "chain wax vs oil", "fourth"]
