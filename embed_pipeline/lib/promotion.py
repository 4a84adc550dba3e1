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

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.contracts import ContractError, HistoryEvent, ServedPointer, dump, load
from embed_pipeline.lib.io import file_lock, read_json, write_json
from embed_pipeline.lib.tracking import CHAMPION_ALIAS

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
    """The served pointer (model + index) as last written, or None before the first promotion.

    Validated (`contracts.ServedPointer`). An unreadable pointer (truncated, not JSON, not a served
    pointer) raises `PromotionError` naming the file: `reconcile` rewrites it from the history when
    the history and the registry alias agree."""
    pointer, problem = _read_pointer(artifacts_dir)
    if problem:
        raise PromotionError(f"{Path(artifacts_dir) / SERVED_FILE}: {problem}; run `embed-pipeline promote` "
                             "(or any command) to reconcile it from the promotion history")
    return pointer


def _read_pointer(artifacts_dir: Path) -> tuple[dict | None, str | None]:
    """(pointer, None), (None, None) when there is none, or (None, why it cannot be read)."""
    path = Path(artifacts_dir) / SERVED_FILE
    if not path.exists():
        return None, None
    try:
        pointer = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({getattr(exc, 'msg', None) or exc.reason}: truncated or overwritten?)"
    if not isinstance(pointer, dict) or "model_version" not in pointer:
        return None, "unreadable (not a served pointer: no model_version)"
    try:
        return load(ServedPointer, pointer, str(path)), None
    except ContractError as exc:
        return None, f"unreadable ({exc})"


def missing_parts(pointer: dict) -> list[str]:
    """What a served entry needs on disk and lacks: its model folder, its FAISS index, its BM25 index.

    A rollback onto a version whose folder was deleted would serve nothing (search fails); it is
    refused before anything moves."""
    missing = []
    if not pointer.get("model_dir") or not Path(pointer["model_dir"]).is_dir():
        missing.append(f"model folder {pointer.get('model_dir')}")
    if not pointer.get("index_path") or not Path(pointer["index_path"]).exists():
        missing.append(f"index {pointer.get('index_path')}")
    if pointer.get("lexical_path") and not Path(pointer["lexical_path"]).exists():
        missing.append(f"BM25 index {pointer['lexical_path']}")
    return missing


def served_history(artifacts_dir: Path) -> list[dict]:
    """Every promotion and rollback event, oldest first.

    Only a torn last line (a crash mid-append) is ignored, and the next append cuts it off. Any
    other line that is not a JSON event raises `PromotionError` naming the file and the line:
    skipping it would silently change what serves and what a rollback restores. Each event is
    validated (`contracts.HistoryEvent`); one that does not match raises `PromotionError` the same way.
    (`reconcile` treats a torn line as damage: it may hide the newest event, see `read_state`.)
    """
    return _read_history(artifacts_dir)[0]


def _read_history(artifacts_dir: Path) -> tuple[list[dict], str | None]:
    """(events, None) or (events before a torn last line, what the torn line starts with)."""
    path = Path(artifacts_dir) / HISTORY_FILE
    if not path.exists():
        return [], None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromotionError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): repair it by hand") from None
    events = []
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                return events, line[:60]
            raise PromotionError(f"{path}: line {number} of {len(lines)} is not a JSON event ({exc.msg}): repair or "
                                 "remove that line by hand; nothing is promoted or rolled back until then") from None
        if not isinstance(event, dict):
            raise PromotionError(f"{path}: line {number} of {len(lines)} is not a JSON object: repair or remove it by hand")
        try:
            events.append(load(HistoryEvent, event, f"{path}: line {number} of {len(lines)}"))
        except ContractError as exc:
            raise PromotionError(f"{exc}: repair or remove that line by hand") from None
    return events, None


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


def _history_lock(artifacts_dir: Path):
    """One promotion or rollback at a time (a CLI and the daemon's sensor may both try)."""
    return file_lock(Path(artifacts_dir) / ".served.lock")


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
    line = json.dumps(dump(HistoryEvent, event))  # validated before anything is written
    _cut_torn_tail(Path(artifacts_dir) / HISTORY_FILE)
    with open(Path(artifacts_dir) / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        import os

        os.fsync(handle.fileno())


def _write_pointer(artifacts_dir: Path, stack: list[dict], event: dict) -> dict | None:
    if not stack:
        path = Path(artifacts_dir) / SERVED_FILE
        if path.exists():
            path.unlink()
        return None
    pointer = dump(ServedPointer, {**stack[-1], "served_since": event["at"], "last_event": event["action"]})
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
        missing = missing_parts(target)
        if missing:
            raise PromotionError(f"cannot roll back to v{target['model_version']}: its {' and '.join(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} gone; nothing changed (v{current['model_version']} still serves)")
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


REPAIRS = ("history", "pointer")


def reconcile(artifacts_dir: Path, alias_version, set_alias, repair: str | None = None) -> list[str]:
    """Bring the served pointer and the registry alias back in line with the history, by evidence.

    `alias_version()` returns the version the alias names (None: no alias); `set_alias(name,
    version)` moves it. Returns what was repaired, one line each (empty when all agreed).

    Intact records: the history is the source of truth (a crash between its append and a view
    leaves the view behind; the view is repaired). Damaged records (a torn last history line that
    may hide the newest event, an unreadable `served.json`, a pointer with no history behind it)
    never overrule intact ones: when every intact record agrees with the history, the damaged
    one is repaired from it; when they disagree, `PromotionError` names each file and what it
    says, and nothing changes, unless `repair` says whom to trust: "history" (serve what the
    readable history says) or "pointer" (record what `served.json` says in the history, as a
    `repair` event, and move the alias to it).
    """
    if repair is not None and repair not in REPAIRS:
        raise ValueError(f"repair must be one of {REPAIRS}, got {repair!r}")
    repaired = []
    folder = Path(artifacts_dir)
    with _history_lock(artifacts_dir):
        history, torn = _read_history(artifacts_dir)
        stack = served_stack(history)
        pointer, pointer_problem = _read_pointer(artifacts_dir)
        if not stack and pointer is None and not torn:
            return repaired  # nothing promoted yet (an unreadable pointer with no history is handled below)
        truth = stack[-1] if stack else None
        current_alias = alias_version()
        current_alias = None if current_alias is None else str(current_alias)
        says_history = f"v{truth['model_version']}" if truth else "nothing served"
        damaged = bool(torn or pointer_problem or (pointer is not None and not stack))
        disagree = []
        if pointer is not None and (truth is None or str(pointer.get("model_version")) != str(truth["model_version"])):
            disagree.append(f"{folder / SERVED_FILE} says v{pointer.get('model_version')}")
        if damaged and current_alias is not None and (truth is None or current_alias != str(truth["model_version"])):
            disagree.append(f"registry alias {CHAMPION_ALIAS!r} says v{current_alias}")
        if damaged and disagree and repair is None:
            raise PromotionError(
                f"promotion records disagree and one is damaged: {folder / HISTORY_FILE} says {says_history}"
                + (f" (its last line is torn: {torn!r}...)" if torn else "")
                + (f"; {folder / SERVED_FILE} is {pointer_problem}" if pointer_problem else "")
                + "; " + "; ".join(disagree)
                + ". Nothing changed. Rerun with --repair pointer to trust served.json (recorded in the history), "
                  "or --repair history to serve what the readable history says")
        if torn:
            _cut_torn_tail(folder / HISTORY_FILE)
            repaired.append(f"cut the torn last line of {HISTORY_FILE} ({torn!r}...)")
        if damaged and disagree and repair == "pointer":
            if pointer is None:
                raise PromotionError(f"--repair pointer: {folder / SERVED_FILE} is {pointer_problem or 'missing'}; "
                                     "nothing to trust there (use --repair history)")
            event = {"action": "repair", **{k: pointer.get(k) for k in SERVED_KEYS}, "at": datetime.now(UTC).isoformat(),
                     "by": "reconcile --repair pointer", "reason": f"history said {says_history}; served.json says "
                     f"v{pointer['model_version']}", "replaced_version": truth["model_version"] if truth else None}
            _append(artifacts_dir, event)
            history.append(event)
            stack = served_stack(history)
            truth = stack[-1]
            repaired.append(f"recorded v{truth['model_version']} from served.json in {HISTORY_FILE} (--repair pointer)")
        if truth is None:  # --repair history with no promotion left in it: nothing serves
            if pointer is not None or pointer_problem:
                (folder / SERVED_FILE).unlink()
                repaired.append(f"removed {SERVED_FILE}: the history serves nothing")
            return repaired
        if pointer is None or any(pointer.get(k) != truth.get(k) for k in SERVED_KEYS):
            _write_pointer(artifacts_dir, stack, history[-1])
            why = f" (it was {pointer_problem})" if pointer_problem else ""
            repaired.append(f"served pointer rewritten to v{truth['model_version']} from the promotion history{why}")
        if current_alias is None or current_alias != str(truth["model_version"]):
            set_alias(truth["model_name"], str(truth["model_version"]))
            repaired.append(f"registry alias moved from {current_alias and 'v' + current_alias} to v{truth['model_version']}")
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
