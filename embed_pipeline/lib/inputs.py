"""Fail fast: read every input the config names before any work starts.

A search-log file missing a column, an eval set whose rows all point at unknown passages, or an
empty corpus is found in seconds here, instead of after minutes of synthetic queries and training.
The assets validate again (and quarantine row by row); this is the up-front, whole-file check.
"""

from __future__ import annotations

from embed_pipeline.lib.click_logs import LOG_COLUMNS
from embed_pipeline.lib.config import PipelineConfig
from embed_pipeline.lib.corpus import dataset_for
from embed_pipeline.lib.io import InputError, read_table
from embed_pipeline.lib.labelled import load_labelled_pairs


def validate_inputs(config: PipelineConfig) -> list[str]:
    """One line per input that was read; raises `InputError` naming the file (and row) that cannot work."""
    # The dataset the `corpus` asset will reuse (built here once, streaming); raises when nothing is readable.
    corpus = dataset_for(config)
    ids = set(corpus.column("passage_id"))
    lines = [f"corpus {len(ids)} passages ({corpus.manifest['quarantined']} quarantined)"]
    if config.search_logs is not None:
        logs = read_table(config.search_logs)
        missing = [c for c in LOG_COLUMNS if c not in logs.columns]
        if missing:
            raise InputError(f"{config.search_logs}: search logs lack column(s) {missing}; expected {LOG_COLUMNS}")
        lines.append(f"search logs {len(logs)} impressions")
    for label, labelled in (("curated_pairs", config.curated_pairs), ("eval", config.eval)):
        if labelled is None:
            continue
        loaded = load_labelled_pairs(labelled, ids)
        if loaded.pairs.empty:
            first = loaded.quarantine.iloc[0].to_dict() if len(loaded.quarantine) else {}
            raise InputError(f"{label}: no usable rows in {labelled.queries or labelled.pairs} "
                             f"({len(loaded.quarantine)} quarantined"
                             + (f"; first: {first['file']} line {first['line']}: {first['reason']}" if first else "") + ")")
        lines.append(f"{label} {len(loaded.pairs)} pairs ({len(loaded.quarantine)} quarantined)")
    if config.compute.engine == "ray":
        from embed_pipeline.lib.ray_runtime import connect_and_check

        cluster = connect_and_check(config.compute, config.artifacts_dir)
        lines.append(f"ray cluster {cluster.address}: {len(cluster.nodes)} node(s), artifacts_dir shared by all"
                     + (f", dashboard {cluster.dashboard_url}" if cluster.dashboard_url else ""))
    return lines
