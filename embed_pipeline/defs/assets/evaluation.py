"""The eval report: BM25, base model, current champion and candidate on the held-out eval set."""

import dataclasses
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.assets.common import embed, load_eval_set, output_dir, ray_encoding, ray_metadata, read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, IndexHandle, ModelHandle, PairsHandle, ReportHandle
from embed_pipeline.lib.evaluation import Contenders, evaluate, record_evaluation, report_markdown, write_report
from embed_pipeline.lib.general import encode_sentences, general_block, read_sts
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.io import write_parquet
from embed_pipeline.lib.leakage import leakage_block
from embed_pipeline.lib.lexical import LexicalIndex
from embed_pipeline.lib.plots import png_markdown
from embed_pipeline.lib.promotion import expected_served
from embed_pipeline.lib.retrieval import read_dev_queries
from embed_pipeline.lib.tracking import RegistryError


def report_metadata(report: dict, path, plots: dict[str, bytes]) -> dict:
    """The eval_report materialisation's metadata; the keys in `defs/metadata.py` are read by the sensor."""
    ci = report["ci"]["recall@10"]
    judged = report["judged"]["candidate"]
    return {
        md.REPORT_PATH: md.path(path),
        md.GATE_PASSED: report["gate"]["passed"],
        md.GATE_SUMMARY: report["gate"]["summary"],
        md.RECALL10_LIFT: report["lift_over_champion"]["recall@10"],
        md.RECALL10_THRESHOLD: next(c["threshold"] for c in report["gate"]["clauses"] if c["name"] == "recall@10 lift over champion"),
        md.CANDIDATE_VERSION: str(report["models"]["candidate"]["version"]),
        "eval_queries": report["eval"]["queries"],
        "retrieval": dg.MetadataValue.json(report.get("retrieval") or {"mode": "dense"}),
        "recall@10 lift CI": f"[{ci['low']:+.4f}, {ci['high']:+.4f}] ({ci['confidence']:.0%}, {ci['resamples']} resamples)",
        "candidate recall@10 (judged)": report[judged]["recall@10"],
        "candidate ndcg@10 (judged)": report[judged]["ndcg@10"],
        "bm25 recall@10": report["bm25"]["recall@10"] if "bm25" in report else "n/a",
        "approximate search recall@10 loss": report["approximate_search_loss"]["recall@10"],
        "general-domain score (base / champion / candidate)": (
            " / ".join(f"{report['general'][m]:.4f}" for m in ("base", "champion", "candidate"))
            if report.get("general", {}).get("available") else "off: no general_reference"),
        "report": dg.MetadataValue.md(report_markdown(report)),
        **{f"plot: {name}": dg.MetadataValue.md(png_markdown(png, name)) for name, png in plots.items()},
    }


def resolve_champion(tracker, config) -> dict | None:
    """The champion's model folder and version; None only when nothing has been promoted yet.

    Fails closed: a registry error, an alias naming a version whose model folder is gone, or an
    alias that disagrees with the promotion history (the served pointer's source of truth) all
    raise: judging a candidate against the base model by mistake could replace a better champion.
    """
    try:
        alias = tracker.alias_version(config.registered_model_name)
    except RegistryError as exc:
        raise dg.Failure(f"cannot resolve the champion, refusing to judge the candidate: {exc}") from None
    served = expected_served(config.artifacts_dir)
    if alias is None and served is None:
        return None
    if alias is None or served is None or str(alias.version) != str(served["model_version"]):
        raise dg.Failure(
            f"the champion is ambiguous: registry alias {'v' + str(alias.version) if alias else 'none'}, promotion history "
            f"{'v' + str(served['model_version']) if served else 'none'}. `embed-pipeline promote` (or the promotion "
            "sensor's next tick) reconciles them from the history; then re-run.")
    path = alias.tags.get("model_path")
    if not path or not Path(path).exists():
        raise dg.Failure(f"champion v{alias.version}: its model folder {path!r} is missing (retention or a manual delete?)")
    return {"name": alias.name, "version": str(alias.version), "run_id": alias.run_id, "model_dir": path,
            "retrieval": served.get("retrieval")}


@dg.asset(group_name="evaluation", kinds={"json"})
def eval_report(
    context: dg.AssetExecutionContext,
    corpus: CorpusHandle,
    curated_pairs: PairsHandle,
    training_pairs: PairsHandle,
    embedding_model: ModelHandle,
    corpus_index: IndexHandle,
    pipeline: PipelineResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """BM25, base, champion and candidate (dense and hybrid) on the eval set: metrics, bootstrap CI, segments, plots, the gate's verdict."""
    config = pipeline.config
    try:
        tracker = mlflow.tracker(config)
    except RegistryError as exc:
        raise dg.Failure(f"cannot resolve the champion, refusing to judge the candidate: {exc}") from None
    champion = resolve_champion(tracker, config)
    dataset = read_corpus(corpus)
    corpus_ids = list(dataset.column("passage_id"))
    eval_set, loaded = load_eval_set(config, set(corpus_ids), curated_pairs)
    context.log.info(f"eval_report: ranking {len(eval_set.queries)} eval queries with BM25, the base model, "
                     f"{'champion v' + champion['version'] if champion else 'no champion (base stands in)'} and the candidate")
    dev_queries, dev_relevant = read_dev_queries(embedding_model.dev_path)
    if dev_queries is None and config.retrieval.mode == "hybrid" and config.retrieval.dense_weight is None:
        raise dg.Failure(f"model v{embedding_model.version}'s handle names no held-out dev queries (it was trained by an "
                         "older version) to choose the hybrid's dense weight on: retrain it, or set retrieval.dense_weight")

    cluster = ray_encoding(context, config)

    def encode(model_ref: str, queries: list[str]):
        vectors = embed(config, model_ref, dataset, queries, context.log.info, cluster)
        if vectors.windows is None:
            return vectors.query_vectors, vectors.corpus_vectors
        return vectors.query_vectors, vectors.corpus_vectors, vectors.corpus_ids, vectors.windows

    models = {"base": config.base_model,
              "champion": ({k: champion[k] for k in ("name", "version", "run_id")} if champion else
                           {"name": config.base_model, "version": None, "note": "no champion yet: the base model stands in"}),
              "candidate": dataclasses.asdict(embedding_model), "index": dataclasses.asdict(corpus_index)}
    served_index = load_index(corpus_index.path)
    contenders = Contenders(base=config.resolved_base_model, candidate=embedding_model.model_dir,
                            champion=champion["model_dir"] if champion else None, served_index=served_index,
                            champion_retrieval=champion["retrieval"] if champion else None)
    lexical = LexicalIndex.load(corpus_index.lexical_path) if corpus_index.lexical_path else None
    general = general_block(read_sts(config.general_reference) if config.general_reference else None,
                            {"base": contenders.base, "champion": contenders.champion, "candidate": contenders.candidate},
                            lambda model_ref, texts: encode_sentences(config, model_ref, texts))
    evaluation = evaluate(eval_set, loaded.pairs, corpus_ids, contenders, encode, config.retrieval,
                          config.gate, models, precision=served_index.meta.get("encode_precision", "unrecorded"),
                          lexical=lexical, dev_queries=dev_queries or (), dev_relevant=dev_relevant, general=general)
    report = evaluation.report
    # How the candidate's index read long passages (lib/windows.py): counted by the index build.
    report["windows"] = served_index.meta.get("windows") or {"enabled": False, "reason": (
        "index.passage_windows is off" if not config.index.passage_windows else "the model reads any length")}
    report["leakage"] = {"mode": config.leakage.on_leak, **leakage_block(training_pairs.files.get("leaks"), training_pairs.quarantined)}
    folder = output_dir(context, config)
    # Rows of the inputs set aside (each with its reason in a file), counted in the report beside the metrics.
    eval_quarantine = write_parquet(loaded.quarantine, folder / "eval_quarantine.parquet")
    report["quarantine"] = {"eval": {"rows": len(loaded.quarantine), "path": str(eval_quarantine)},
                            "curated_pairs": {"rows": curated_pairs.quarantined, "path": curated_pairs.files.get("quarantine")}}
    if logs_quarantine := training_pairs.files.get("search_logs_quarantine"):
        report["quarantine"]["search_logs"] = {"rows": int(pq.ParquetFile(logs_quarantine).metadata.num_rows),
                                               "path": logs_quarantine}
    path, plots = write_report(report, evaluation.per_query, folder, config.gate.min_segment_queries)
    if evaluation.weight.table is not None:
        evaluation.weight.table.to_csv(folder / "dense_weight_dev.csv", index=False)
    record_evaluation(tracker, embedding_model.run_id, evaluation, folder)
    judged, against, ci = report["judged"]["candidate"], report["judged"]["champion"], report["ci"]["recall@10"]
    # One line here: the full Markdown is the asset's `report` metadata, and the CLI prints it once at the end.
    context.log.info(f"eval report written to {path}: recall@10 {report[against]['recall@10']:.4f} ({against}) -> "
                     f"{report[judged]['recall@10']:.4f} ({judged}), 95% CI of the lift [{ci['low']:+.4f}, {ci['high']:+.4f}]; "
                     f"gate {'passed' if report['gate']['passed'] else 'refused: ' + report['gate']['summary']}")
    return dg.MaterializeResult(value=ReportHandle(str(path), bool(report["gate"]["passed"])),
                                metadata={**report_metadata(report, path, plots), "config_hash": pipeline.config_hash,
                                          **ray_metadata(cluster)})

