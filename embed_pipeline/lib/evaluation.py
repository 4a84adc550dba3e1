"""Scoring models on the held-out eval set and assembling the eval report.

The report is a JSON contract read by the CLI (`--json`), the promotion gate and the sensor:
`base`, `champion`, `candidate` (served index) and `candidate_exact` (exact search) map each
metric to its mean; `lift` is candidate minus base; `lift_over_champion` is candidate minus
champion (the number the gate judges); `approximate_search_loss` is exact minus index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from embed_pipeline.lib.indexing import build_faiss_index, search
from embed_pipeline.lib.metrics import MAX_K, METRICS, mean_metrics, per_query_metrics


@dataclass(frozen=True)
class EvalSet:
    """Eval queries (`query_id` -> text) and their relevant passage ids."""

    queries: dict[str, str]
    relevant: dict[str, set[str]]


def rank_exact(query_vectors: np.ndarray, corpus_vectors: np.ndarray, corpus_ids: list[str], k: int = MAX_K) -> list[list[str]]:
    """Top-k passage ids per query by exact inner product."""
    _, rows = search(build_faiss_index(corpus_vectors, "flat"), query_vectors, k)
    return [[corpus_ids[r] for r in row if r >= 0] for row in rows]


def score_rankings(eval_set: EvalSet, ranked: list[list[str]]) -> pd.DataFrame:
    """Per-query metrics; `ranked[i]` belongs to the i-th query of `eval_set.queries`."""
    rankings = dict(zip(eval_set.queries, ranked, strict=True))
    return per_query_metrics(rankings, eval_set.relevant)


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {m: round(a[m] - b[m], 6) for m in METRICS}


def build_report(
    per_query: dict[str, pd.DataFrame],
    models: dict[str, dict],
    extra: dict | None = None,
) -> dict:
    """The report dict from per-query tables keyed 'base', 'champion', 'candidate', 'candidate_exact'."""
    means = {name: mean_metrics(frame) for name, frame in per_query.items()}
    report = {
        "eval": {"queries": int(len(per_query["candidate"]))},
        **means,
        "lift": diff(means["candidate"], means["base"]),
        "lift_over_champion": diff(means["candidate"], means["champion"]),
        "approximate_search_loss": diff(means["candidate_exact"], means["candidate"]),
        "models": models,
    }
    report.update(extra or {})
    return report


def report_markdown(report: dict) -> str:
    """The headline table (metric x model, plus lifts) as Markdown for the Dagster UI."""
    names = [n for n in ("base", "champion", "candidate", "candidate_exact") if n in report]
    lines = ["| metric | " + " | ".join(names) + " | lift vs base | lift vs champion |", "|---" * (len(names) + 3) + "|"]
    for m in METRICS:
        cells = [f"{report[n][m]:.4f}" for n in names]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {report['lift'][m]:+.4f} | {report['lift_over_champion'][m]:+.4f} |")
    return "\n".join(lines)
