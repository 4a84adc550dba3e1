"""Synthetic queries from any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp, a hosted API).

The client speaks `POST {base_url}/chat/completions` (base_url usually ends in `/v1`) with the
stdlib only, so nothing new is installed. What makes it usable on a real corpus:

- a disk cache keyed by (passage text hash, prompt template, model): a re-run, or a run after a
  crash, pays only for passages it has not seen with this exact prompt and model;
- `concurrency` requests in flight at once (threads: the work is waiting on the network);
- retries with exponential backoff (`backoff_seconds * 2**attempt`) on timeouts, connection
  errors, HTTP 429 and 5xx; other 4xx (bad key, unknown model) fail at once since retrying cannot
  fix them;
- a per-request timeout, so a hung server costs `timeout_seconds`, not the whole run.

The API key is a constructor argument (the Dagster resource reads it from an environment variable)
and is only ever put in the `Authorization` header: never in errors, logs or the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

import pandas as pd

from embed_pipeline.lib.corpus import passage_texts
from embed_pipeline.lib.io import atomic_path
from embed_pipeline.lib.text import clean_text, text_hash

DEFAULT_PROMPT = (
    "You write search queries. Below is a passage from a document collection. Write {n} different "
    "queries that a real user might type into a search box and for which this passage is the best "
    "answer. Vary the wording; do not copy whole sentences from the passage. Reply with one query "
    "per line and nothing else.\n\nPassage:\n{passage}"
)
_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")


class LLMError(RuntimeError):
    """The endpoint failed for good (after retries, or with an error retrying cannot fix)."""


@dataclass
class ChatStats:
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    _lock: Lock = field(default_factory=Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class ChatClient:
    """A minimal OpenAI-compatible chat-completions client with timeout and retries."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_seconds: float = 60.0,
                 max_retries: int = 3, backoff_seconds: float = 1.0, temperature: float = 0.7):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.temperature = temperature
        self.stats = ChatStats()

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def complete(self, prompt: str) -> str:
        """The assistant's reply to one user message; raises LLMError when retries run out."""
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "messages": [{"role": "user", "content": prompt}]}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add(retries=1)
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            self.stats.add(requests=1)
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {self.url}"
                if exc.code != 429 and exc.code < 500:
                    raise LLMError(f"{last} (not retried: check the model name and API key)") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__} from {self.url}: {reason}"
            except (KeyError, IndexError, ValueError) as exc:
                raise LLMError(f"{self.url} did not answer in the chat-completions format: {exc!r}") from None
        raise LLMError(f"{last} (gave up after {self.max_retries + 1} attempts)")


def parse_queries(reply: str, n: int) -> list[str]:
    """Up to `n` distinct queries from a reply: one per line, list marks and quotes removed."""
    out: list[str] = []
    for line in reply.splitlines():
        query = clean_text(_LIST_MARK.sub("", line)).strip("\"'")
        if query and query.casefold() not in {q.casefold() for q in out}:
            out.append(query)
    return out[:n]


class ReplyCache:
    """One JSON file per (passage hash, prompt template, model) under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(passage: str, prompt: str, model: str) -> str:
        return hashlib.sha256(json.dumps([text_hash(passage), prompt, model]).encode()).hexdigest()[:32]

    def get(self, key: str) -> str | None:
        path = self.root / f"{key}.json"
        return json.loads(path.read_text(encoding="utf-8"))["reply"] if path.exists() else None

    def put(self, key: str, reply: str) -> None:
        with atomic_path(self.root / f"{key}.json") as tmp:
            tmp.write_text(json.dumps({"reply": reply}), encoding="utf-8")


def generate_llm_queries(passages: pd.DataFrame, client: ChatClient, cache_dir: Path, queries_per_passage: int = 3,
                         prompt: str = DEFAULT_PROMPT, concurrency: int = 4) -> pd.DataFrame:
    """Columns query, passage_id, source='synthetic', positive_text='' (the passage itself), method='llm'.

    `prompt` is a template with `{n}` (queries wanted) and `{passage}` (title and text). Replies
    come from the cache when (passage, prompt, model) was asked before; `client.stats` counts
    requests, retries and cache hits.
    """
    cache = ReplyCache(cache_dir)
    texts = passage_texts(passages)

    def ask(text: str) -> str:
        key = ReplyCache.key(text, f"{prompt}\n[n={queries_per_passage}]", client.model)
        cached = cache.get(key)
        if cached is not None:
            client.stats.add(cache_hits=1)
            return cached
        reply = client.complete(prompt.format(n=queries_per_passage, passage=text))
        cache.put(key, reply)
        return reply

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        replies = list(pool.map(ask, texts))
    rows = [(q, pid, "synthetic", "", "llm") for pid, reply in zip(passages["passage_id"], replies, strict=True)
            for q in parse_queries(reply, queries_per_passage)]
    return pd.DataFrame(rows, columns=["query", "passage_id", "source", "positive_text", "method"])
