"""Eval reports built from constructed per-query hits through the real report code (for gate and sensor tests)."""

import pandas as pd

from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.evaluation import build_report
from embed_pipeline.lib.metrics import METRICS
from embed_pipeline.lib.promotion import evaluate_gate


DENSE = {"mode": "dense", "fusion": None, "dense_weight": None, "dense_weight_source": "config", "rrf_k": 60,
         "depth": 100, "precision": "fp32", "derived": ""}


def frame(hits: list[float]) -> pd.DataFrame:
    """Per-query table where every metric equals the query's hit (1.0) or miss (0.0)."""
    return pd.DataFrame({m: hits for m in METRICS}, index=[f"q{i}" for i in range(len(hits))])


def make_report(champion: list[float], candidate: list[float], segments: dict[str, int] | None = None,
                models: dict | None = None, gate: GateConfig | None = None) -> dict:
    """A report from constructed per-query hits; `segments` names consecutive runs of queries.

    With `gate`, the report carries that gate's verdict, as the eval_report asset writes it.
    """
    groups = {}
    if segments:
        labels = [name for name, count in segments.items() for _ in range(count)]
        groups["segment"] = {f"q{i}": label for i, label in enumerate(labels)}
    per_query = {"base": frame(champion), "champion": frame(champion), "candidate": frame(candidate),
                 "candidate_exact": frame(candidate)}
    report = build_report(per_query, models or {"candidate": {"version": "2"}}, groups, resamples=1000, seed=0)
    report["retrieval"] = {**DENSE, "champion": {**DENSE, "as": "the candidate's mode"}}  # as assemble_report records it
    if gate is not None:
        report["gate"] = evaluate_gate(report, gate)
    return report


CLEAR_LIFT = ([1.0] * 70 + [0.0] * 30, [1.0] * 85 + [0.0] * 15)  # +0.15 recall@10 over 100 queries
NO_LIFT = ([1.0] * 70 + [0.0] * 30, [1.0] * 70 + [0.0] * 30)
