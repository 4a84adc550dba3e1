"""The served model: which model version and index answer queries. Changed only by promotion or rollback."""

import dagster as dg
from pydantic import Field

from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.io import read_json
from embed_pipeline.lib.promotion import read_served, write_served


class PromotionConfig(dg.Config):
    report_path: str = Field(description="The eval_report JSON whose candidate is to be promoted.")


@dg.asset(group_name="serving", deps=["eval_report"], kinds={"mlflow"})
def served_model(config: PromotionConfig, pipeline: PipelineResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The champion: MLflow alias `champion` plus the served pointer (model + index) under the artifacts dir."""
    settings = pipeline.load()
    report = read_json(config.report_path)
    if not report["gate"]["passed"]:
        raise dg.Failure(f"refusing to promote: the gate did not pass for {config.report_path}: {report['gate']['summary']}",
                         metadata={"gate": report["gate"]["summary"]})
    candidate = report["models"]["candidate"]
    tracker = mlflow.tracker(settings)
    previous = read_served(settings.artifacts_dir)
    tracker.set_alias(candidate["name"], candidate["version"])
    pointer = write_served(settings.artifacts_dir, {
        "model_name": candidate["name"],
        "model_version": candidate["version"],
        "model_dir": candidate["model_dir"],
        "mlflow_run_id": candidate["run_id"],
        "index_path": report["models"]["index"]["path"],
        "report_path": config.report_path,
    })
    decision = f"promoted: {report['gate']['summary']}" + (f"; replaced v{previous['model_version']}" if previous else "")
    tracker.set_tags(candidate["run_id"], {"promotion": "promoted", "promotion_decision": decision,
                                           "promoted_at": pointer["served_since"]})
    return dg.MaterializeResult(
        metadata={
            "decision": decision,
            "model": f"{candidate['name']} v{candidate['version']}",
            "previous": f"v{previous['model_version']}" if previous else "none",
            "recall@10 lift over champion": report["lift_over_champion"]["recall@10"],
            "index_path": dg.MetadataValue.path(pointer["index_path"]),
        }
    )
