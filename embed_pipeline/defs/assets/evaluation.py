"""The eval report: base model, current champion and candidate on the held-out eval set."""

import dagster as dg

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import embed, load_eval_set, read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.evaluation import assemble_report, rank_exact, report_markdown, write_report
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.metrics import MAX_K
from embed_pipeline.lib.plots import png_markdown


def report_metadata(report: dict, path, plots: dict[str, bytes]) -> dict:
    """The eval_report materialisation's metadata; the keys in `defs/metadata.py` are read by the sensor."""
    ci = report["ci"]["recall@10"]
    return {
        md.REPORT_PATH: md.path(path),
        md.GATE_PASSED: report["gate"]["passed"],
        md.GATE_SUMMARY: report["gate"]["summary"],
        md.RECALL10_LIFT: report["lift_over_champion"]["recall@10"],
        md.RECALL10_THRESHOLD: next(c["threshold"] for c in report["gate"]["clauses"] if c["name"] == "recall@10 lift over champion"),
        md.CANDIDATE_VERSION: str(report["models"]["candidate"]["version"]),
        "eval_queries": report["eval"]["queries"],
        "recall@10 lift CI": f"[{ci['low']:+.4f}, {ci['high']:+.4f}] ({ci['confidence']:.0%}, {ci['resamples']} resamples)",
        "candidate recall@10": report["candidate"]["recall@10"],
        "candidate ndcg@10": report["candidate"]["ndcg@10"],
        "approximate search recall@10 loss": report["approximate_search_loss"]["recall@10"],
        "report": dg.MetadataValue.md(report_markdown(report)),
        **{f"plot: {name}": dg.MetadataValue.md(png_markdown(png, name)) for name, png in plots.items()},
    }


@dg.asset(group_name="evaluation", kinds={"json"})
def eval_report(
    context: dg.AssetExecutionContext,
    corpus: dict,
    embedding_model: dict,
    corpus_index: dict,
    pipeline: PipelineResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Base model, champion and candidate (served index and exact search) on the eval set: metrics, bootstrap CI, segments, plots and the gate's verdict."""
    config = pipeline.load()
    tracker = mlflow.tracker(config)
    passages = read_corpus(corpus)
    ids = list(passages["passage_id"])
    eval_set, loaded = load_eval_set(config, set(ids))
    query_texts = list(eval_set.queries.values())

    def exact_rankings(model_ref: str):
        """Rankings by exact search, plus the query vectors (the served index reuses them)."""
        model = embed(config, model_ref, passages, query_texts)
        ranked = rank_exact(model.query_vectors, model.corpus_vectors, ids, MAX_K)
        return dict(zip(eval_set.queries, ranked, strict=True)), model.query_vectors

    rankings = {"base": exact_rankings(config.resolved_base_model)[0]}
    champion = tracker.alias_version(config.registered_model_name)
    if champion is not None:
        rankings["champion"] = exact_rankings(champion.tags["model_path"])[0]
        champion_info = {"name": champion.name, "version": str(champion.version), "run_id": champion.run_id}
    else:
        rankings["champion"] = rankings["base"]
        champion_info = {"name": config.base_model, "version": None, "note": "no champion yet: the base model stands in"}
    rankings["candidate_exact"], query_vectors = exact_rankings(embedding_model["model_dir"])
    _, served_ranked = load_index(corpus_index["path"]).search_ids(query_vectors, MAX_K)
    rankings["candidate"] = dict(zip(eval_set.queries, served_ranked, strict=True))

    models = {"base": config.base_model, "champion": champion_info, "candidate": embedding_model,
              "index": {k: corpus_index[k] for k in ("path", "type", "size")}}
    report, per_query = assemble_report(eval_set, loaded.pairs, rankings, models, config.gate)
    path, plots = write_report(report, per_query, config.artifacts_dir / "reports" / context.run_id, config.gate.min_segment_queries)
    run_id = embedding_model["run_id"]
    tracker.log_metrics(run_id, {f"eval/{m}": v for m, v in report["candidate"].items()}
                        | {f"eval/lift_over_champion/{m}": v for m, v in report["lift_over_champion"].items()}
                        | {f"eval/ci_low/{m}": c["low"] for m, c in report["ci"].items()})
    tracker.log_artifacts(run_id, path.parent, "eval")
    decision = "gate passed: awaiting promotion" if report["gate"]["passed"] else f"not promoted: {report['gate']['summary']}"
    tracker.set_tags(run_id, {"gate_passed": report["gate"]["passed"], "promotion_decision": decision})
    context.log.info("eval report:\n" + report_markdown(report))
    return dg.MaterializeResult(value={"path": str(path)}, metadata=report_metadata(report, path, plots))

