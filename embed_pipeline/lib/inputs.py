"""Fail fast: read every input the config names before any work starts.

A search-log file missing a column, an eval set whose rows all point at unknown passages, or an
empty corpus is found in seconds here, instead of after minutes of synthetic queries and training.
The assets validate again (and quarantine row by row); this is the up-front, whole-file check.
"""

from __future__ import annotations

from embed_pipeline.lib.click_logs import pairs_from_search_logs, read_search_logs
from embed_pipeline.lib.config import PipelineConfig
from embed_pipeline.lib.corpus import dataset_for
from embed_pipeline.lib.io import InputError
from embed_pipeline.lib.labelled import load_labelled_pairs


def validate_inputs(config: PipelineConfig) -> list[str]:
    """One line per input that was read; raises `InputError` naming the file (and row) that cannot work."""
    # The dataset the `corpus` asset will reuse (built here once, streaming); raises when nothing is readable.
    corpus = dataset_for(config)
    ids = set(corpus.column("passage_id"))
    lines = [f"corpus {len(ids)} passages ({corpus.manifest['quarantined']} quarantined)"]
    if config.search_logs is not None:
        logs = pairs_from_search_logs(read_search_logs(config.search_logs), ids, config.search_log_rules,
                                      source=str(config.search_logs))
        if logs.counts.dropped["unparseable_rows"] == logs.counts.rows_in:
            first = logs.quarantine.iloc[0]
            raise InputError(f"{config.search_logs}: every row is unreadable ({logs.counts.rows_in} quarantined; first: "
                             f"row {first['line']}: {first['reason']})")
        if not logs.clicks_read:  # a `clicked` column of only false/missing values: zero pairs would be silent
            raise InputError(f"{config.search_logs}: no impression is a click ({logs.counts.rows_in} rows, "
                             f"{len(logs.quarantine)} quarantined): the `clicked` column holds only false or missing values "
                             "(true is true/yes/y/t/1)")
        first = logs.quarantine.iloc[0] if len(logs.quarantine) else None
        lines.append(f"search logs {logs.counts.rows_in} impressions, {logs.clicks} clicks, {len(logs.pairs)} pairs "
                     f"({len(logs.quarantine)} quarantined" + (f"; first: row {first['line']}: {first['reason']}" if first is not None else "")
                     + ")")
    for label, labelled in (("curated_pairs", config.curated_pairs), ("eval", config.eval)):
        if labelled is None:
            continue
        loaded = load_labelled_pairs(labelled, ids)
        if loaded.pairs.empty:
            first = loaded.quarantine.iloc[0].to_dict() if len(loaded.quarantine) else {}
            raise InputError(f"{label}: no usable rows in {labelled.queries or labelled.pairs} "
                             f"({len(loaded.quarantine)} quarantined"
                             + (f"; first: {first['file']} line {first['line']}: {first['reason']}" if first else "") + ")")
        first = loaded.quarantine.iloc[0].to_dict() if len(loaded.quarantine) else {}
        where = f"; first: {first['file']} line {first['line']}: {first['reason']}" if first else ""
        share = len(loaded.quarantine) / loaded.rows_in if loaded.rows_in else 0.0
        limit = config.curation.max_quarantine_share
        if label == "curated_pairs" and share > limit:  # the blocking check would fail after minutes of work: say it now
            raise InputError(f"curated_pairs: {len(loaded.quarantine)} of {loaded.rows_in} rows quarantined "
                             f"({share:.0%} > curation.max_quarantine_share {limit:.0%}){where}")
        lines.append(f"{label} {len(loaded.pairs)} pairs ({len(loaded.quarantine)} quarantined{where})")
    if config.compute.engine == "ray":
        from embed_pipeline.lib.ray_runtime import connect_and_check

        cluster = connect_and_check(config.compute, config.artifacts_dir)
        lines.append(f"ray cluster {cluster.address}: {len(cluster.nodes)} node(s), artifacts_dir shared by all"
                     + (f", dashboard {cluster.dashboard_url}" if cluster.dashboard_url else ""))
    return lines
