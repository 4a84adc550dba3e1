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


def evaluate_gate(report: dict, gate: GateConfig) -> dict:
    """{"passed": bool, "clauses": [{name, value, threshold, passed}]} for `report`."""
    lift = report["lift_over_champion"]["recall@10"]
    clauses = [
        {
            "name": "recall@10 lift over champion",
            "value": lift,
            "threshold": gate.min_recall_at_10_lift,
            "passed": bool(lift >= gate.min_recall_at_10_lift),
        }
    ]
    return {"passed": all(c["passed"] for c in clauses), "clauses": clauses}


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
