"""The eval report's two plots, as PNG bytes: recall@k curves and per-segment lift bars.

PNGs (not interactive HTML) because both places that show them take images: the Dagster UI
renders a Markdown image with a base64 data URI, and MLflow shows PNG artifacts inline.
Matplotlib's Agg backend is used explicitly so no display is needed.
"""

from __future__ import annotations

import base64
import io

MODEL_STYLES = {"base": ("#7f7f7f", "--"), "champion": ("#1f77b4", "-."), "candidate": ("#d62728", "-")}


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def recall_curves_png(curves: dict[str, dict[str, float]]) -> bytes:
    """Mean recall@k against k (log axis) for each model in `curves` (model -> {k: recall})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(segments))
    figure, axis = plt.subplots(figsize=(6, max(2.0, 0.28 * len(rows) + 1)))
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


def png_markdown(png: bytes, alt: str) -> str:
    """A Markdown image with the PNG inlined as a data URI (the Dagster UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
