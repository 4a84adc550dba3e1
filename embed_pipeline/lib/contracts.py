"""The JSON files other processes and users read, as pydantic models: the eval report
(`eval_report.json`, `embed-pipeline run --json`), the served pointer (`served.json`) and the
promotion history (`served_history.jsonl`, one event a line).

Each file is written through its model (`dump`) and validated when read (`load`), so a writer
that drifts fails where it writes and a damaged file fails where it is read, naming the field.
Readers get plain dicts back (the JSON as written): the rest of the code indexes them as before.
Their JSON Schemas ship in `embed_pipeline/schemas/` (`python -m embed_pipeline.lib.contracts`
regenerates them; a test checks the shipped files equal the models).

The report is open to new top-level sections (a stage may add one, like `leakage`); every
section named here is typed. The pointer and the history events are closed: an unknown key is an
error, since a rollback restores exactly what they say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

Metrics = dict[str, float]  # metric name (recall@10, ndcg@10, mrr@10, ...) -> mean over the eval queries


class ContractError(ValueError):
    """A contract file that does not match its model: which file, which field, why."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)


# --- retrieval spec (lib/retrieval.RetrievalSpec as a record) -------------------------------------------


class RetrievalRecord(_Closed):
    """How one model's index answers a query: what the gate judged and, after a promotion, what serves.

    Every field is written now; records from before retrieval specs were kept have only `mode`,
    `fusion` and `dense_weight` (`RetrievalSpec.from_record` derives the rest and says so), and
    they still read.
    """

    mode: Literal["dense", "hybrid"]
    fusion: str | None = Field(None, description="hybrid only: convex or rrf")
    dense_weight: float | None = Field(None, description="hybrid, convex fusion: the dense score's weight in [0, 1]")
    dense_weight_source: str | None = Field(None, description="where the weight came from (config, dev split, ...)")
    rrf_k: int | None = Field(None, description="reciprocal-rank fusion's k")
    depth: int | None = Field(None, description="hits taken from each retriever before fusing")
    precision: str | None = Field(None, description="what the corpus vectors were encoded in (bf16, fp16, fp32, tf32)")
    derived: str = Field("", description="non-empty: the fields above were assumed, and why")


class ChampionRetrieval(RetrievalRecord):
    as_: str = Field(alias="as", description="'served': as the champion serves now; else the candidate's mode")


class ReportRetrieval(RetrievalRecord):
    champion: ChampionRetrieval | None = None


# --- eval report -----------------------------------------------------------------------------------


class EvalCounts(_Closed):
    queries: int = Field(ge=0, description="eval queries scored")


class Judged(_Closed):
    candidate: str = Field(description="the report row judged as the candidate (candidate or candidate_hybrid)")
    champion: str = Field(description="the report row judged as the champion (champion or champion_hybrid)")


class Interval(_Closed):
    """Paired-bootstrap interval of the candidate's lift over the champion."""

    point: float
    low: float
    high: float
    confidence: float = Field(gt=0, lt=1)
    resamples: int
    seed: int
    queries: int


class Segment(_Closed):
    kind: str = Field(description="source, length or segment")
    segment: str
    queries: int
    champion_recall_at_10: float = Field(alias="champion_recall@10")
    candidate_recall_at_10: float = Field(alias="candidate_recall@10")
    recall_at_10_lift: float = Field(alias="recall@10_lift")
    ndcg_at_10_lift: float = Field(alias="ndcg@10_lift")


class Clause(_Closed):
    name: str
    value: float | int | None
    threshold: float | int
    comparison: str
    passed: bool
    verdict: Literal["pass", "fail"]
    detail: str = ""


class Gate(_Closed):
    passed: bool
    clauses: list[Clause]
    summary: str = Field(description="the failed clauses in one line, or 'all clauses passed'")


class EvalReport(BaseModel):
    """`eval_report.json`: every model's mean metrics, the lifts, their intervals, the segments, the
    retrieval spec judged and the gate's verdict (lib/evaluation.py's docstring says what each means)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # Optional: rows that only some runs have, and sections reports of earlier versions lack (they still read).
    eval: EvalCounts
    bm25: Metrics | None = None
    base: Metrics
    champion: Metrics
    champion_hybrid: Metrics | None = None
    candidate: Metrics
    candidate_exact: Metrics | None = None
    candidate_hybrid: Metrics | None = None
    judged: Judged | None = None
    lift: Metrics = Field(description="judged candidate minus base")
    lift_over_champion: Metrics = Field(description="judged candidate minus judged champion: what the gate judges")
    approximate_search_loss: Metrics | None = Field(None, description="exact search minus the index")
    ci: dict[str, Interval] | None = None
    general: dict[str, Any] | None = Field(
        None, description="the forgetting guard (lib/general.py): available, set, pairs, metric (spearman_cosine), "
                          "base, champion, candidate, candidate_minus_base; or available false and the reason")
    segments: list[Segment] | None = None
    recall_curves: dict[str, dict[str, float]] | None = Field(None, description="row -> {k: mean recall@k}")
    models: dict[str, Any] = Field(description="what was compared: base name, champion and candidate versions, the index")
    retrieval: ReportRetrieval | None = None
    gate: Gate


# --- served pointer and promotion history ------------------------------------------------------------


class ServedFields(_Closed):
    """What serves: the model (registry name and version, its folder), its index and how it is searched."""

    model_name: str
    model_version: str
    model_dir: str | None = None
    mlflow_run_id: str | None = None
    index_path: str | None = None
    lexical_path: str | None = None
    report_path: str | None = None
    retrieval: RetrievalRecord | None = None


class ServedPointer(ServedFields):
    """`served.json`: the top of the replayed promotion history, replaced atomically."""

    served_since: str = Field(description="ISO 8601 time of the event that made it serve")
    last_event: Literal["promote", "rollback", "reindex", "repair"]


class HistoryEvent(ServedFields):
    """One line of `served_history.jsonl`. promote: serve these fields (pushed on the stack); rollback:
    pop the top, these fields are what serves again; reindex: the served model's index rebuilt; repair: what
    `served.json` said, recorded by `--repair pointer` (pushed like a promotion)."""

    action: Literal["promote", "rollback", "reindex", "repair"] = "promote"
    model_name: str | None = None  # a reindex event names only the version
    at: str = Field(description="ISO 8601 time")
    by: str = Field(description="who or what acted: a sensor, the CLI, the demo")
    reason: str = ""
    replaced_version: str | None = None


CONTRACTS: dict[str, type[BaseModel]] = {"eval_report": EvalReport, "served_pointer": ServedPointer,
                                         "history_event": HistoryEvent}


def dump(model: type[BaseModel], data: dict) -> dict:
    """`data` validated against `model` and returned as the JSON it writes (keys as in the file,
    only those given). Raises `ContractError` when a writer produced something else."""
    try:
        return model.model_validate(data).model_dump(mode="json", by_alias=True, exclude_unset=True)
    except ValidationError as exc:
        raise ContractError(f"{model.__name__} not written: {_first_error(exc)}") from None


def load(model: type[BaseModel], data: Any, source: str) -> dict:
    """`data` (parsed JSON from `source`) validated against `model`; the same dict back."""
    try:
        return model.model_validate(data).model_dump(mode="json", by_alias=True, exclude_unset=True)
    except ValidationError as exc:
        raise ContractError(f"{source} is not a valid {model.__name__}: {_first_error(exc)}") from None


def read_eval_report(path: str | Path) -> dict:
    """An `eval_report.json`, validated."""
    return load(EvalReport, json.loads(Path(path).read_text(encoding="utf-8")), str(path))


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def schemas() -> dict[str, dict]:
    """Each contract's JSON Schema (as read: by alias), by file stem."""
    return {name: model.model_json_schema(by_alias=True, mode="serialization") for name, model in CONTRACTS.items()}


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = folder / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        print(path)
