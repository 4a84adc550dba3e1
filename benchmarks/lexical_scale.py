"""BM25 index cost at scale: build, save, load and a 1,000-query search at 100k and 1M passages (not a test).

    .venv/bin/python benchmarks/lexical_scale.py                       # 100k and 1M
    .venv/bin/python benchmarks/lexical_scale.py --sizes 100000 --queries 200

The passages are SYNTHETIC: generated text, not a real corpus. Each is 50-150 words (mean 100,
a short abstract) drawn from a Zipf-distributed (s = 1.1) vocabulary of 200,000 made-up
syllable words, some with English endings ("-ing", "-s", "-ed", "-ation") so the Snowball stemmer
has work to do, mixed with English stopwords at about a third of the tokens, as in real prose.
Queries are 3-8 words from the same distribution. Real text has a different term distribution,
so treat the figures as the cost of the machinery (tokenising, stemming, the sparse score matrix,
top-k selection), not of any particular corpus.

Each size runs in its own process so the peak memory (max RSS) is that size's alone. Timings are
wall-clock on whatever machine runs it: on a shared 2-core box they move with the load others put
on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embed_pipeline.lib.lexical import LexicalIndex

ENDINGS = ("", "", "", "s", "ing", "ed", "ation", "er")
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]


def vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct made-up words of 2-4 syllables, some with an English ending."""
    words: dict[str, None] = {}
    while len(words) < size:
        n = size - len(words)
        parts = rng.integers(0, len(SYLLABLES), size=(n, 4))
        lengths = rng.integers(2, 5, size=n)
        endings = rng.integers(0, len(ENDINGS), size=n)
        for row, length, ending in zip(parts, lengths, endings, strict=True):
            words["".join(SYLLABLES[i] for i in row[:length]) + ENDINGS[ending]] = None
    return np.array(list(words)[:size], dtype=object)


def synthetic_texts(count: int, min_words: int, max_words: int, rng: np.random.Generator, vocab: np.ndarray,
                    stopwords: np.ndarray, stopword_share: float = 0.33) -> list[str]:
    """`count` texts of `min_words`-`max_words` words: Zipf content words mixed with stopwords."""
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    lengths = rng.integers(min_words, max_words + 1, size=count)
    total = int(lengths.sum())
    words = vocab[rng.choice(len(vocab), size=total, p=p)]
    is_stop = rng.random(total) < stopword_share
    words[is_stop] = stopwords[rng.integers(0, len(stopwords), size=int(is_stop.sum()))]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [" ".join(words[bounds[i]:bounds[i + 1]]) for i in range(count)]


class Clock:
    """Wall and CPU seconds of each phase: on a machine others load, CPU time is the steadier figure
    (bm25s indexing and our search are single-threaded Python + numpy)."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.times[f"{name}_s"] = time.perf_counter() - wall
        self.times[f"{name}_cpu_s"] = time.process_time() - cpu
        return out


def measure(passages: int, queries: int, k: int, seed: int) -> dict:
    from bm25s.stopwords import STOPWORDS_EN

    rng = np.random.default_rng(seed)
    vocab = vocabulary(200_000, rng)
    stopwords = np.array(sorted(STOPWORDS_EN), dtype=object)
    texts = synthetic_texts(passages, 50, 150, rng, vocab, stopwords)
    query_texts = synthetic_texts(queries, 3, 8, rng, vocab, stopwords)
    ids = [f"p{i}" for i in range(passages)]
    clock = Clock()
    index = clock("build", LexicalIndex.build, ids, texts)
    del texts
    with tempfile.TemporaryDirectory(prefix="lexical-scale-") as scratch:
        folder = Path(scratch) / "lexical"
        clock("save", index.save, folder)
        disk = sum(f.stat().st_size for f in folder.iterdir())
        del index
        loaded = clock("load", LexicalIndex.load, folder)
        found, scores = clock("search", loaded.search, query_texts, k)
    assert len(found) == queries and scores.shape == (queries, k)
    return {"passages": passages, **clock.times, "ms_per_query": 1000 * clock.times["search_s"] / queries,
            "cpu_ms_per_query": 1000 * clock.times["search_cpu_s"] / queries, "disk_mb": disk / 1e6,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100, help="results per query (100: the hybrid's candidate depth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.queries, args.k, args.seed)))
        return 0
    print(f"wall s (CPU s) per phase; search = {args.queries} queries, top {args.k}")
    print("| passages | build | save | load | search | ms/query | on disk MB | peak RSS GB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--queries", str(args.queries),
                              "--k", str(args.k), "--seed", str(args.seed)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        cells = " | ".join(f"{r[f'{p}_s']:.1f} ({r[f'{p}_cpu_s']:.1f})" for p in ("build", "save", "load", "search"))
        print(f"| {r['passages']:,} | {cells} | {r['ms_per_query']:.1f} ({r['cpu_ms_per_query']:.1f}) | "
              f"{r['disk_mb']:.0f} | {r['peak_rss_gb']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
