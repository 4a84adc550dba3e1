"""The served model: which model version and indexes answer queries. Changed only by promotion or rollback.

Both are materialisations of this asset (with who and why in the metadata), so the UI's history
of `served_model` is the history of what served. The promotion history file is the source of
truth; the MLflow alias and the served pointer are reconciled from it (lib/promotion.py).
"""

from typing import Literal

import dagster as dg
from pydantic import Field

from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.contracts import read_eval_report
from embed_pipeline.lib.promotion import PromotionError, promote, rollback
from embed_pipeline.lib.retrieval import RetrievalSpec


class ServedModelConfig(dg.Config):
    action: Literal["promote", "rollback"] = Field(default="promote", description="promote a gated candidate, or roll back one step")
    report_path: str = Field(default="", description="promote: the eval_report JSON whose candidate is to be promoted")
    requested_by: str = Field(default="promotion_sensor", description="who asked (a sensor, a CLI user)")
    reason: str = Field(default="", description="why (shown in the UI and kept in the promotion history)")


@dg.asset(group_name="serving", deps=["eval_report"], kinds={"mlflow"})
def served_model(context: dg.AssetExecutionContext, config: ServedModelConfig, pipeline: PipelineResource,
                 mlflow: MlflowResource) -> dg.MaterializeResult:
    """The champion: MLflow alias `champion` plus the served pointer (model, FAISS and BM25 indexes, retrieval mode)."""
    settings = pipeline.config
    tracker = mlflow.tracker(settings)
    by = f"{config.requested_by} (run {context.run_id})"
    if config.action == "rollback":
        try:
            change = rollback(settings.artifacts_dir, by, config.reason or "rollback requested", tracker.set_alias)
        except PromotionError as exc:
            raise dg.Failure(str(exc)) from None
        pointer = change.pointer
        decision = f"rolled back from v{change.previous_version} to v{pointer['model_version']}"
        # Both runs say what they are now: the one taken off no longer claims to serve.
        if change.replaced.get("mlflow_run_id"):
            tracker.set_tags(change.replaced["mlflow_run_id"], {"promotion": "rolled back", "promotion_decision": decision,
                                                                "rolled_back_at": change.event["at"]})
        if pointer.get("mlflow_run_id"):
            tracker.set_tags(pointer["mlflow_run_id"], {"promotion": "serves again", "promotion_decision": decision,
                                                        "promoted_at": change.event["at"]})
    else:
        report = read_eval_report(config.report_path)
        if not report["gate"]["passed"]:
            raise dg.Failure(f"refusing to promote: the gate did not pass for {config.report_path}: {report['gate']['summary']}",
                             metadata={"gate": report["gate"]["summary"]})
        candidate = report["models"]["candidate"]
        index = report["models"]["index"]
        reason = config.reason or f"gate passed: {report['gate']['summary']}"
        change = promote(settings.artifacts_dir, {
            "model_name": candidate["name"], "model_version": str(candidate["version"]), "model_dir": candidate["model_dir"],
            "mlflow_run_id": candidate["run_id"], "index_path": index["path"], "lexical_path": index.get("lexical_path") or None,
            "report_path": config.report_path,
            # The spec the gate judged, whole (a report from an older version: derived, and it says so).
            "retrieval": RetrievalSpec.from_record(report.get("retrieval"), settings.retrieval.depth,
                                                   settings.index.encode_precision).as_dict(),
        }, by, reason, tracker.set_alias)
        pointer = change.pointer
        if change.event is None:
            decision = f"v{pointer['model_version']} already serves: nothing changed"
        else:
            same = str(change.previous_version) == str(pointer["model_version"])
            decision = (f"promoted v{pointer['model_version']}" + (" with a newly judged retrieval spec" if same else
                        f", replacing v{change.previous_version}" if change.previous_version else ""))
            if change.replaced is not None and not same and change.replaced.get("mlflow_run_id"):
                tracker.set_tags(change.replaced["mlflow_run_id"], {"promotion": "replaced",
                                                                    "promotion_decision": f"replaced by v{pointer['model_version']}"})
            tracker.set_tags(candidate["run_id"], {"promotion": "promoted", "promotion_decision": decision,
                                                   "promoted_at": change.event["at"]})
    return dg.MaterializeResult(
        metadata={
            "action": config.action,
            "decision": decision,
            "model": f"{pointer['model_name']} v{pointer['model_version']}",
            "model_version": str(pointer["model_version"]),
            "previous": f"v{change.previous_version}" if change.previous_version else "none",
            "requested_by": by,
            "reason": change.event["reason"] if change.event else reason,
            "retrieval": dg.MetadataValue.json(pointer.get("retrieval") or {}),
            "index_path": dg.MetadataValue.path(pointer["index_path"]),
        }
    )
