"""Every plot the pipeline shows, as PNG bytes: recall@k curves, per-segment lifts, mining score
histograms, query lengths per source.

PNGs (not interactive HTML) because both places that show them take images: the Dagster UI
renders a Markdown image with a base64 data URI, and MLflow shows PNG artifacts inline.
Matplotlib's Agg backend is used explicitly so no display is needed.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

MODEL_STYLES = {"bm25": ("#8c564b", ":"), "base": ("#7f7f7f", "--"), "champion": ("#1f77b4", "-."),
                "candidate": ("#d62728", "-"), "candidate_hybrid": ("#d62728", "-")}


def _figure(width: float, height: float):
    """A new (figure, axis) on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def recall_curves_png(curves: dict[str, dict[str, float]]) -> bytes:
    """Mean recall@k against k (log axis) for each model in `curves` (model -> {k: recall})."""
    figure, axis = _figure(6, 4)
    for name, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        color, style = MODEL_STYLES.get(name, (None, "-"))
        label = "champion (= base)" if name == "champion" and curve == curves.get("base") else name
        axis.plot(ks, [curve[str(k)] if str(k) in curve else curve[k] for k in ks], style, color=color, marker="o", markersize=3, label=label)
    axis.set_xscale("log")
    axis.set_xlabel("k (passages retrieved)")
    axis.set_ylabel("mean recall@k")
    axis.set_title("recall@k on the eval set")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return _png(figure)


def segment_lifts_png(segments: list[dict], min_queries: int = 0) -> bytes:
    """Horizontal bars: recall@10 lift over the champion per segment, labelled with query counts.

    Segments with fewer than `min_queries` queries are drawn hatched: the gate does not judge them.
    """
    rows = list(reversed(segments))
    figure, axis = _figure(6, max(2.0, 0.28 * len(rows) + 1))
    lifts = [r["recall@10_lift"] for r in rows]
    bars = axis.barh(range(len(rows)), lifts, color=["#2ca02c" if v >= 0 else "#d62728" for v in lifts])
    for bar, row in zip(bars, rows, strict=True):
        if row["queries"] < min_queries:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    axis.set_yticks(range(len(rows)), [f"{r['kind']}: {r['segment']} (n={r['queries']})" for r in rows], fontsize=8)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_xlabel("recall@10 lift over champion")
    axis.set_title("lift per segment" + (f" (hatched: < {min_queries} queries, not judged)" if min_queries else ""), fontsize=9)
    axis.grid(True, axis="x", alpha=0.3)
    return _png(figure)


def score_histogram_png(positive: np.ndarray, kept: np.ndarray, removed: np.ndarray) -> bytes:
    """How the base model scores positives, kept negatives and margin-removed candidates.

    Kept negatives should sit clearly left of the positives; a large removed mass right next to
    the positives means many unlabelled positives (or a margin set too wide).
    """
    figure, axis = _figure(6, 3.5)
    series = [("positives", positive, "#2ca02c"), ("kept negatives", kept, "#d62728"), ("removed by margin", removed, "#7f7f7f")]
    values = np.concatenate([v for _, v, _ in series if len(v)]) if any(len(v) for _, v, _ in series) else np.zeros(1)
    bins = np.linspace(float(values.min()), float(values.max()) + 1e-6, 31)
    for label, v, color in series:
        if len(v):
            axis.hist(v, bins=bins, alpha=0.5, color=color, label=f"{label} (n={len(v)})", density=True)
    axis.set_xlabel("cosine score of the base model")
    axis.set_ylabel("density")
    axis.set_title("hard-negative mining: score distributions")
    axis.legend(fontsize=8)
    return _png(figure)


def query_lengths_png(table: pd.DataFrame) -> bytes:
    """Grouped bars of `lib.pairs.length_histogram`'s table: query words x source."""
    figure, axis = _figure(5, 2.6)
    width = 0.8 / max(1, len(table.columns))
    positions = np.arange(len(table.index))
    for i, source in enumerate(table.columns):
        axis.bar(positions + i * width, table[source].to_numpy(), width, label=str(source))
    axis.set_xticks(positions + width * (len(table.columns) - 1) / 2, [str(b) for b in table.index], fontsize=8)
    axis.set_xlabel("query length (words)", fontsize=8)
    axis.set_ylabel("pairs", fontsize=8)
    axis.legend(fontsize=7)
    return _png(figure)


def png_markdown(png: bytes, alt: str) -> str:
    """A Markdown image with the PNG inlined as a data URI (the Dagster UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
