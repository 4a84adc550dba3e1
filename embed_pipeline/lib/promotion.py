"""The promotion gate and the served-model pointer.

The gate turns an eval report into a decision with every clause's value, threshold and verdict.
The served pointer (`served.json` under the artifacts dir) names the model and index that serve
queries; it is replaced atomically (write a new file, then rename), so a reader sees either the
old pointer or the new one. Each promotion appends to `served_history.jsonl`, which rollback reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.io import read_json, write_json

SERVED_FILE = "served.json"
HISTORY_FILE = "served_history.jsonl"


def _clause(name: str, value, threshold, comparison: str, passed: bool, detail: str = "") -> dict:
    return {"name": name, "value": value, "threshold": threshold, "comparison": comparison,
            "passed": bool(passed), "verdict": "pass" if passed else "fail", "detail": detail}


def evaluate_gate(report: dict, gate: GateConfig) -> dict:
    """Every clause of the promotion gate on `report`; `passed` only when all of them pass.

    Clauses (values in recall units, beside their thresholds):
    - eval set size >= `min_eval_queries` (or `allow_small_eval`): under ~50 queries one model's
      recall@10 has a standard error near 0.05, and no lift is judgeable.
    - recall@10 lift over the champion >= `min_recall_at_10_lift`.
    - the lower end of its paired-bootstrap interval > `min_ci_lower_bound` (0: not noise).
    - the worst recall@10 lift among segments with >= `min_segment_queries` queries is
      >= -`max_segment_regression` (a model may not buy its average by breaking one slice).
    Returns {"passed", "clauses": [{name, value, threshold, comparison, passed, verdict, detail}],
    "summary"}; `summary` is one line naming the failed clauses (or "all clauses passed").
    """
    queries = int(report["eval"]["queries"])
    small = queries < gate.min_eval_queries
    lift = report["lift_over_champion"]["recall@10"]
    ci = report["ci"]["recall@10"]
    judged = [s for s in report.get("segments", []) if s["queries"] >= gate.min_segment_queries]
    worst = min(judged, key=lambda s: s["recall@10_lift"]) if judged else None
    clauses = [
        _clause("eval queries", queries, gate.min_eval_queries, ">=", not small or gate.allow_small_eval,
                "below the minimum, allowed by gate.allow_small_eval" if small and gate.allow_small_eval
                else "too few eval queries to judge a lift (set gate.allow_small_eval to override)" if small else ""),
        _clause("recall@10 lift over champion", lift, gate.min_recall_at_10_lift, ">=", lift >= gate.min_recall_at_10_lift),
        _clause("recall@10 lift CI lower bound", ci["low"], gate.min_ci_lower_bound, ">", ci["low"] > gate.min_ci_lower_bound,
                f"{ci['confidence']:.0%} paired-bootstrap interval [{ci['low']:+.4f}, {ci['high']:+.4f}], {ci['resamples']} resamples"),
        _clause("worst segment recall@10 lift", worst["recall@10_lift"] if worst else None, -gate.max_segment_regression, ">=",
                worst is None or worst["recall@10_lift"] >= -gate.max_segment_regression,
                f"{worst['kind']}={worst['segment']} ({worst['queries']} queries; {len(judged)} segments judged)" if worst
                else f"no segment has >= {gate.min_segment_queries} queries"),
    ]
    failed = [c for c in clauses if not c["passed"]]
    summary = "; ".join(f"{c['name']} {_fmt(c['value'])} is not {c['comparison']} {_fmt(c['threshold'])}" for c in failed)
    return {"passed": not failed, "clauses": clauses, "summary": summary or "all clauses passed"}


def _fmt(value) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


def read_served(artifacts_dir: Path) -> dict | None:
    path = Path(artifacts_dir) / SERVED_FILE
    return read_json(path) if path.exists() else None


def write_served(artifacts_dir: Path, pointer: dict) -> dict:
    """Atomically point serving at `pointer` (model version, model path, index path) and log it."""
    pointer = {**pointer, "served_since": datetime.now(UTC).isoformat()}
    write_json(pointer, Path(artifacts_dir) / SERVED_FILE)
    history = Path(artifacts_dir) / HISTORY_FILE
    with open(history, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(pointer) + "\n")
    return pointer


def served_history(artifacts_dir: Path) -> list[dict]:
    path = Path(artifacts_dir) / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]



def rollback_served(artifacts_dir: Path) -> dict | None:
    """Point serving back at the champion before the current one; None when there is none.

    The history keeps every promotion and rollback; the target is the newest entry, before the
    current one, that names a different model version.
    """
    history = served_history(artifacts_dir)
    current = read_served(artifacts_dir)
    if current is None:
        return None
    earlier = [h for h in history if h["model_version"] != current["model_version"]]
    if not earlier:
        return None
    target = {k: v for k, v in earlier[-1].items() if k != "served_since"}
    return write_served(artifacts_dir, {**target, "rolled_back_from": current["model_version"]})
