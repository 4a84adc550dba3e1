"""Swappable synthetic-query generators (Dagster's HNClient pattern): one abstract resource,
an offline implementation (the default: inverse cloze + titles, no network) and one for any
OpenAI-compatible chat endpoint.

To use an LLM, say so in the YAML (`synthetic.generator: llm` with `synthetic.llm.base_url`,
`model`, `api_key_env` = the *name* of the environment variable holding the key, `concurrency`),
or bind the `query_generator` resource to the LLM implementation in your own definitions, e.g.

    build_defs(query_generator=OpenAICompatibleQueryGenerator(
        base_url="http://localhost:8000/v1", model="qwen2.5-7b-instruct",
        api_key=dg.EnvVar("LLM_API_KEY")))

The key comes from the environment at run time; it is never logged, never in metadata, and never
an MLflow param (it is not part of the pipeline config, which is what becomes params).
"""

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from embed_pipeline.lib.config import LLMGenerator, SyntheticConfig
from embed_pipeline.lib.llm import DEFAULT_PROMPT, ChatClient, generate_llm_queries
from embed_pipeline.lib.synthetic import inverse_cloze_pairs


@dataclass(frozen=True)
class GeneratedQueries:
    pairs: pd.DataFrame  # query, passage_id, source='synthetic', positive_text, method
    stats: dict = field(default_factory=dict)  # shown as metadata: generator name, requests, cache hits...


class QueryGeneratorResource(dg.ConfigurableResource):
    """Makes synthetic (query, passage) pairs from passages. Subclasses implement `generate`."""

    def generate(self, passages: pd.DataFrame, settings: SyntheticConfig, cache_dir: Path) -> GeneratedQueries:
        raise NotImplementedError(f"{type(self).__name__} must implement generate()")


class OfflineQueryGenerator(QueryGeneratorResource):
    """Inverse cloze task (a sentence as the query, the rest as positive) and title-as-query; no network."""

    def generate(self, passages: pd.DataFrame, settings: SyntheticConfig, cache_dir: Path) -> GeneratedQueries:
        pairs = inverse_cloze_pairs(passages, settings.pairs_per_passage, settings.min_query_words, settings.seed)
        return GeneratedQueries(pairs, {"generator": "offline (inverse cloze + titles)"})


class OpenAICompatibleQueryGenerator(QueryGeneratorResource):
    """Queries written by an LLM behind an OpenAI-compatible `/chat/completions` endpoint, cached on disk."""

    base_url: str = Field(description="Endpoint base URL, usually ending in /v1 (vLLM, Ollama, llama.cpp, a hosted API).")
    model: str = Field(description="Model name the endpoint serves; part of the cache key.")
    api_key: str = Field(default="", description="API key; pass dg.EnvVar('...'), never a literal. Empty: no auth header.")
    concurrency: int = Field(default=4, description="Requests in flight at once.")
    max_retries: int = Field(default=3, description="Retries on timeouts, connection errors, 429 and 5xx.")
    backoff_seconds: float = Field(default=1.0, description="First retry waits this long; each next one twice as long.")
    timeout_seconds: float = Field(default=60.0, description="Per-request timeout.")
    temperature: float = Field(default=0.7, description="Sampling temperature.")
    prompt: str = Field(default=DEFAULT_PROMPT, description="Template with {n} and {passage}; part of the cache key.")

    def generate(self, passages: pd.DataFrame, settings: SyntheticConfig, cache_dir: Path) -> GeneratedQueries:
        client = ChatClient(self.base_url, self.model, self.api_key, self.timeout_seconds, self.max_retries,
                            self.backoff_seconds, self.temperature)
        pairs = generate_llm_queries(passages, client, cache_dir, settings.pairs_per_passage, self.prompt, self.concurrency)
        stats = {"generator": f"LLM {self.model} at {self.base_url}", "llm_requests": client.stats.requests,
                 "llm_retries": client.stats.retries, "llm_cache_hits": client.stats.cache_hits}
        return GeneratedQueries(pairs, stats)


def generator_for(settings: SyntheticConfig, bound: QueryGeneratorResource) -> QueryGeneratorResource:
    """The generator the YAML asks for: `llm` builds the LLM client (its key read through
    `dg.EnvVar(settings.llm.api_key_env)` at run time, never stored or logged); `offline` keeps
    the bound resource (the offline generator unless the definitions bound another)."""
    if settings.generator != "llm":
        return bound
    llm: LLMGenerator = settings.llm
    key = dg.EnvVar(llm.api_key_env).get_value() if llm.api_key_env else ""
    if llm.api_key_env and key is None:
        raise dg.Failure(f"synthetic.llm.api_key_env names {llm.api_key_env!r}, which is not set in the environment")
    return OpenAICompatibleQueryGenerator(base_url=llm.base_url, model=llm.model, api_key=key or "", concurrency=llm.concurrency,
                                          max_retries=llm.max_retries, timeout_seconds=llm.timeout_seconds,
                                          temperature=llm.temperature)
