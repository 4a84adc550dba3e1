"""The promotion gate, the promotion history, and the served pointer derived from it.

The gate turns an eval report into a decision with every clause's value, threshold and verdict.

One source of truth for "what serves": the append-only history `served_history.jsonl` of
promotion and rollback events. Replaying it gives a stack of served versions (a promotion pushes,
a rollback pops), so rollback walks back 3 -> 2 -> 1 and refuses when nothing is earlier. Two
views are reconciled from it: the served pointer `served.json` (replaced atomically: readers see
the old or the new one) and the MLflow alias `champion`. A crash between the history append and
either view leaves a disagreement that `reconcile` repairs (the CLI and the promotion sensor run
it before acting); a reader such as eval_report fails closed on a disagreement instead of guessing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass
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
    - the forgetting guard: the candidate's general-domain score (report `general`, lib/general.py)
      minus the base model's is >= -`max_general_drop`; passes, saying the guard is off, when the
      report has no general-domain scores.
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
        _general_clause(report.get("general"), gate),
    ]
    failed = [c for c in clauses if not c["passed"]]
    summary = "; ".join(f"{c['name']} {_fmt(c['value'])} is not {c['comparison']} {_fmt(c['threshold'])}" for c in failed)
    return {"passed": not failed, "clauses": clauses, "summary": summary or "all clauses passed"}


def _general_clause(general: dict | None, gate: GateConfig) -> dict:
    """General-domain score drops at most `max_general_drop` below the base model (off without scores)."""
    name = "general-domain score vs base"
    if not general or not general.get("available"):
        reason = (general or {}).get("reason", "the report has no general-domain scores")
        return _clause(name, None, -gate.max_general_drop, ">=", True, f"guard off: {reason}")
    change = round(general["candidate"] - general["base"], 6)
    return _clause(name, change, -gate.max_general_drop, ">=", change >= -gate.max_general_drop,
                   f"Spearman of cosine on {general['pairs']} pairs of {general['set']}: base {general['base']:.4f}, "
                   f"champion {general['champion']:.4f}, candidate {general['candidate']:.4f}")


def _fmt(value) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


SERVED_KEYS = ("model_name", "model_version", "model_dir", "mlflow_run_id", "index_path", "lexical_path",
               "report_path", "retrieval")


class PromotionError(RuntimeError):
    """A promotion or rollback that cannot be done (nothing earlier to roll back to, a bad history)."""


def read_served(artifacts_dir: Path) -> dict | None:
    """The served pointer (model + index) as last written, or None before the first promotion."""
    path = Path(artifacts_dir) / SERVED_FILE
    return read_json(path) if path.exists() else None


def served_history(artifacts_dir: Path) -> list[dict]:
    """Every promotion and rollback event, oldest first.

    Only a torn last line (a crash mid-append) is ignored, and the next append cuts it off. Any
    other line that is not a JSON event raises `PromotionError` naming the file and the line:
    skipping it would silently change what serves and what a rollback restores.
    """
    path = Path(artifacts_dir) / HISTORY_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    events = []
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise PromotionError(f"{path}: line {number} of {len(lines)} is not a JSON event ({exc.msg}): repair or "
                                 "remove that line by hand; nothing is promoted or rolled back until then") from None
        if not isinstance(event, dict):
            raise PromotionError(f"{path}: line {number} of {len(lines)} is not a JSON object: repair or remove it by hand")
        events.append(event)
    return events


def served_stack(history: list[dict]) -> list[dict]:
    """Replay the history: each promotion pushes its pointer, each rollback pops the top one, and a
    re-index (the served model's index rebuilt after a corpus change) updates the top's index paths."""
    stack: list[dict] = []
    for event in history:
        action = event.get("action", "promote")
        if action == "rollback":
            if stack:
                stack.pop()
        elif action == "reindex":
            if stack and str(stack[-1]["model_version"]) == str(event.get("model_version")):
                stack[-1] = {**stack[-1], "index_path": event["index_path"], "lexical_path": event.get("lexical_path")}
        else:
            stack.append({k: event.get(k) for k in SERVED_KEYS})
    return stack


@contextlib.contextmanager
def _history_lock(artifacts_dir: Path) -> Iterator[None]:
    """One promotion or rollback at a time (a CLI and the daemon's sensor may both try)."""
    Path(artifacts_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(artifacts_dir) / ".served.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cut_torn_tail(path: Path) -> None:
    """Drop a torn last line (no newline, not JSON) so the next event starts a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    tail = data[data.rfind(b"\n") + 1:]
    try:
        json.loads(tail)
    except json.JSONDecodeError:
        with open(path, "r+b") as handle:
            handle.truncate(len(data) - len(tail))
        return
    with open(path, "ab") as handle:  # a whole event whose newline was lost: keep it
        handle.write(b"\n")


def _append(artifacts_dir: Path, event: dict) -> None:
    _cut_torn_tail(Path(artifacts_dir) / HISTORY_FILE)
    with open(Path(artifacts_dir) / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(event) + "\n")
        handle.flush()
        import os

        os.fsync(handle.fileno())


def _write_pointer(artifacts_dir: Path, stack: list[dict], event: dict) -> dict | None:
    if not stack:
        path = Path(artifacts_dir) / SERVED_FILE
        if path.exists():
            path.unlink()
        return None
    pointer = {**stack[-1], "served_since": event["at"], "last_event": event["action"]}
    write_json(pointer, Path(artifacts_dir) / SERVED_FILE)
    return pointer


@dataclass(frozen=True)
class ServedChange:
    """What a promotion or rollback did: the pointer now served and the version it replaced."""

    pointer: dict | None
    previous_version: str | None
    event: dict | None  # None: nothing changed (the model already served)
    replaced: dict | None = None  # what served before (a promotion goes over it, a rollback takes it off): model, run id, spec


def promote(artifacts_dir: Path, pointer: dict, by: str, reason: str, set_alias=None) -> ServedChange:
    """Serve `pointer` (model name/version/dir, index paths, report, retrieval spec): history first, then the views.

    The model that serves already, with the same retrieval spec, is nothing to record; with
    another spec (re-judged in another mode) it is a promotion of that spec. `set_alias(name,
    version)` moves the registry alias (the caller's tracker); a crash after the history append
    leaves views that `reconcile` repairs.
    """
    with _history_lock(artifacts_dir):
        stack = served_stack(served_history(artifacts_dir))
        previous = stack[-1]["model_version"] if stack else None
        if (previous is not None and str(previous) == str(pointer["model_version"])
                and stack[-1].get("retrieval") == pointer.get("retrieval")):
            return ServedChange(read_served(artifacts_dir), previous, None)  # already serving it: nothing to record
        event = {"action": "promote", **{k: pointer.get(k) for k in SERVED_KEYS}, "at": datetime.now(UTC).isoformat(),
                 "by": by, "reason": reason, "replaced_version": previous}
        _append(artifacts_dir, event)
        replaced = stack[-1] if stack else None
        stack.append({k: pointer.get(k) for k in SERVED_KEYS})
        written = _write_pointer(artifacts_dir, stack, event)
        if set_alias is not None:
            set_alias(pointer["model_name"], str(pointer["model_version"]))
    return ServedChange(written, previous, event, replaced)


def rollback(artifacts_dir: Path, by: str, reason: str, set_alias=None) -> ServedChange:
    """Serve the champion before the current one again (3 -> 2 -> 1); refuses when there is none."""
    with _history_lock(artifacts_dir):
        stack = served_stack(served_history(artifacts_dir))
        if len(stack) < 2:
            raise PromotionError("nothing to roll back to: " + ("no model has been promoted yet" if not stack else
                                 f"v{stack[-1]['model_version']} is the first promoted model"))
        current = stack.pop()
        target = stack[-1]
        event = {"action": "rollback", **target, "at": datetime.now(UTC).isoformat(), "by": by, "reason": reason,
                 "replaced_version": current["model_version"]}
        _append(artifacts_dir, event)
        written = _write_pointer(artifacts_dir, stack, event)
        if set_alias is not None:
            set_alias(target["model_name"], str(target["model_version"]))
    return ServedChange(written, current["model_version"], event, current)


def record_reindex(artifacts_dir: Path, model_version: str, index_path: str, lexical_path: str | None, by: str) -> dict | None:
    """Serve a rebuilt index of the model that serves now; None (nothing changed) when another
    model has been promoted or rolled back to in the meantime."""
    with _history_lock(artifacts_dir):
        stack = served_stack(served_history(artifacts_dir))
        if not stack or str(stack[-1]["model_version"]) != str(model_version):
            return None
        event = {"action": "reindex", "model_version": str(model_version), "index_path": index_path,
                 "lexical_path": lexical_path, "at": datetime.now(UTC).isoformat(), "by": by, "reason": "corpus changed"}
        _append(artifacts_dir, event)
        stack[-1] = {**stack[-1], "index_path": index_path, "lexical_path": lexical_path}
        return _write_pointer(artifacts_dir, stack, event)


def expected_served(artifacts_dir: Path) -> dict | None:
    """What the history says serves now (the top of the replayed stack), or None."""
    stack = served_stack(served_history(artifacts_dir))
    return stack[-1] if stack else None


def reconcile(artifacts_dir: Path, alias_version, set_alias) -> list[str]:
    """Bring the served pointer and the registry alias back in line with the history.

    `alias_version()` returns the version the alias names (None: no alias); `set_alias(name,
    version)` moves it. Returns what was repaired, one line each (empty when all agreed).
    """
    repaired = []
    with _history_lock(artifacts_dir):
        history = served_history(artifacts_dir)
        stack = served_stack(history)
        if not stack:
            return repaired
        truth = stack[-1]
        pointer = read_served(artifacts_dir)
        if pointer is None or any(pointer.get(k) != truth.get(k) for k in SERVED_KEYS):
            _write_pointer(artifacts_dir, stack, history[-1])
            repaired.append(f"served pointer rewritten to v{truth['model_version']} from the promotion history")
        current_alias = alias_version()
        if current_alias is None or str(current_alias) != str(truth["model_version"]):
            set_alias(truth["model_name"], str(truth["model_version"]))
            repaired.append(f"registry alias moved from {current_alias and 'v' + str(current_alias)} to v{truth['model_version']}")
    return repaired


def rollback_targets(artifacts_dir: Path, keep: int) -> list[dict]:
    """The served entries a rollback may still need: the top of the stack down to `keep` models
    below the current one. Counted in distinct versions: the same version promoted again with
    another retrieval spec must not push an older model (a real rollback target) out."""
    targets, versions = [], set()
    for entry in reversed(served_stack(served_history(artifacts_dir))):
        versions.add(str(entry["model_version"]))
        if len(versions) > keep + 1:
            break
        targets.append(entry)
    return targets[::-1]
