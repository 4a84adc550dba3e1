"""Small helpers shared by asset modules: run-scoped artifact locations and reading stage outputs."""

from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.lib.artifacts import CorpusHandle, PairsHandle, run_folder
from embed_pipeline.lib.config import PipelineConfig


def output_dir(context: dg.AssetExecutionContext, config: PipelineConfig) -> Path:
    """This asset's folder for this run: `<artifacts_dir>/assets/<asset>/<run id>/` (never shared).
    `<asset>` is the key's last part: a component instance's prefix (`support/corpus`) is already its own artifacts_dir."""
    return run_folder(config.artifacts_dir, context.asset_key.path[-1], context.run_id)


def cache_dir(config: PipelineConfig) -> Path:
    """Content-addressed embedding cache (model fingerprint x text hash): safe to share across runs."""
    return config.artifacts_dir / "embedding_cache"


def read_corpus(handle: CorpusHandle):
    """The corpus dataset a `corpus` materialisation built (a `lib.corpus.CorpusDataset`: read by shard and column)."""
    from embed_pipeline.lib.corpus import MANIFEST, CorpusDataset

    if not (Path(handle.path) / MANIFEST).exists():
        raise dg.Failure(f"the corpus materialisation this step loaded ({handle.path}) is not a corpus dataset: it was "
                         "written by an older version (one Parquet file) or its folder was removed; materialise "
                         "`corpus` again (or select it in this run)")
    return CorpusDataset(Path(handle.path))


def passage_ids(handle: CorpusHandle) -> set[str]:
    """Every passage id of the corpus (one column read; no texts)."""
    return set(read_corpus(handle).column("passage_id"))


def load_eval_set(config: PipelineConfig, passage_ids: set[str], curated: PairsHandle):
    """The held-out eval set as an `EvalSet` plus the validated rows (with `segment` when given).

    With no `eval` in the config, the split that this run's curated_pairs held out is the eval
    set, so eval_report and the leakage check always see the same queries.
    """
    from embed_pipeline.lib.evaluation import EvalSet
    from embed_pipeline.lib.labelled import LabelledPairs, load_labelled_pairs, relevance_map

    if config.eval is None:
        split = pd.read_parquet(curated.files["eval_split"])
        loaded = LabelledPairs(split, split.iloc[0:0].assign(reason=""), len(split))
    else:
        loaded = load_labelled_pairs(config.eval, passage_ids)
    if loaded.pairs.empty:
        raise ValueError(f"the eval set {config.eval or curated.files.get('eval_split')} has no usable rows "
                         f"({len(loaded.quarantine)} quarantined)")
    queries = loaded.pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict()
    return EvalSet(queries=queries, relevant=relevance_map(loaded.pairs)), loaded


def embed(config: PipelineConfig, model_ref: str, dataset, queries: list[str], on_progress=None, cluster=None):
    """`embed_dataset_and_queries` with the config's cache, batch size, prompts, threads and precision
    (`on_progress`: where its progress lines go, e.g. `context.log.info`; the corpus side on
    `cluster`, a `ray_encoding(...)`, when given). Corpus vectors are in `dataset`'s row order, one
    row per window of a long passage with `index.passage_windows` (`corpus_ids` names each row's passage)."""
    from embed_pipeline.lib.shards import embed_dataset_and_queries

    return embed_dataset_and_queries(model_ref, dataset, queries, cache_dir(config),
                                     config.encode_batch_size, config.corpus_prompt, config.query_prompt,
                                     config.index.encode_threads, config.index.encode_precision, config.index.encode_processes,
                                     on_progress=on_progress, cluster=cluster, windows=lambda model: passage_windows(config, model))


def ray_encoding(context: dg.AssetExecutionContext, config: PipelineConfig):
    """Where this step encodes corpora: with `compute.engine: ray`, a `RayEncoding` reporting its
    progress to the step's log; None (this machine) otherwise."""
    if config.compute.engine != "ray":
        return None
    from embed_pipeline.lib.ray_encoding import RayEncoding

    return RayEncoding(config.compute, config.artifacts_dir, on_progress=context.log.info)


def ray_metadata(cluster) -> dict:
    """The step's metadata about its cluster encodes (dashboard job link, rows, nodes); {} when local."""
    meta = cluster.metadata() if cluster is not None else {}
    if meta.get("ray_dashboard"):
        meta["ray_dashboard"] = dg.MetadataValue.url(meta["ray_dashboard"])
    return meta


def shard_dir(config: PipelineConfig, fingerprint: str, windows=None) -> Path:
    """Per-shard embedding files of one model (by content fingerprint; content-addressed, shared);
    with passage windows (a `WindowSpec`) in a subfolder named by the spec (`w254s127`), so files of
    another window never mix into one index."""
    folder = config.artifacts_dir / "embeddings" / fingerprint
    return folder / windows.tag if windows is not None else folder


def window_meta(windows) -> dict | None:
    """The index meta's `windows` block (the spec; the index build adds the counts), None with windows off."""
    return windows.as_dict() if windows is not None else None


def md_window(windows) -> str:
    """The window setting as a metadata line."""
    return f"{windows.tokens} tokens, stride {windows.stride}" if windows is not None else "off (passages read up to the model's window)"


def passage_windows(config: PipelineConfig, model):
    """The `WindowSpec` the config asks of a loaded model (`index.passage_windows`), or None."""
    from embed_pipeline.lib.windows import windows_for

    return windows_for(model, config.index, config.corpus_prompt)


def served_model_ref(config: PipelineConfig) -> str:
    """The model serving queries: the served pointer's model folder, else the base model."""
    from embed_pipeline.lib.promotion import read_served

    served = read_served(config.artifacts_dir)
    return served["model_dir"] if served else config.resolved_base_model
