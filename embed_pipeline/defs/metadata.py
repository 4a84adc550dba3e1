"""Metadata helpers and the metadata keys that sensors and checks read (one place for each)."""

from pathlib import Path

import dagster as dg
import pandas as pd

# Keys read back by the promotion sensor and the CLI.
REPORT_PATH = "report_path"
GATE_PASSED = "gate_passed"
GATE_SUMMARY = "gate_summary"
RECALL10_LIFT = "recall@10 lift over champion"
RECALL10_THRESHOLD = "min_recall_at_10_lift"
CANDIDATE_VERSION = "candidate_model_version"


def preview(frame: pd.DataFrame, rows: int = 10) -> dg.MetadataValue:
    """The first rows of a table as Markdown, long cells shortened."""
    shown = frame.head(rows).copy()
    for column in shown.columns:
        if shown[column].dtype == object:
            shown[column] = shown[column].map(lambda v: (str(v)[:80] + "...") if len(str(v)) > 80 else str(v))
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_(empty)_")


def path(p: Path) -> dg.MetadataValue:
    return dg.MetadataValue.path(str(p))


def counts_md(counts: dict[str, int]) -> dg.MetadataValue:
    lines = ["| rule / item | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts.items()]
    return dg.MetadataValue.md("\n".join(lines))
