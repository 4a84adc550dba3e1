"""Corpus encoding: the pipeline (cache, dedup, thread setting) against plain `SentenceTransformer.encode`.

Same model, same texts, same process, runs interleaved (pipeline, plain, pipeline, plain, ...) so
machine-load drift hits both sides alike. The pipeline runs cold (an empty cache each round: the
honest comparison) and warm (the cache from its last cold round: what a re-run costs). Prints
passages/s for each and the ratio pipeline/plain (>= 1.0 means the pipeline is no slower).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_throughput.py --limit 400 --rounds 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_throughput.py --corpus /work/shared/datasets/scifact/corpus.jsonl --limit 300
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.corpus import load_corpus, passage_texts
from embed_pipeline.lib.encoding import encode_cached, load_model, model_fingerprint
from embed_pipeline.lib.hardware import available_cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="corpus .jsonl/.parquet (default: the demo corpus)")
    parser.add_argument("--limit", type=int, default=400, help="first N passages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    config = load_config(None)
    texts = passage_texts(load_corpus(Path(args.corpus) if args.corpus else config.corpus).passages)[: args.limit]
    model = load_model(config.resolved_base_model, device="cpu")
    fingerprint = model_fingerprint(model)
    model.encode(texts[:8], batch_size=8)  # warm up kernels and the tokenizer

    plain, cold, warm = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            encode_cached(model, texts, Path(cache), fingerprint, args.batch_size, progress=False)
            cold.append(len(texts) / (time.perf_counter() - t))
            t = time.perf_counter()
            model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            plain.append(len(texts) / (time.perf_counter() - t))
            t = time.perf_counter()
            _, stats = encode_cached(model, texts, Path(cache), fingerprint, args.batch_size, progress=False)
            warm.append(len(texts) / (time.perf_counter() - t))
            assert stats.encoded == 0
    med = statistics.median
    print(json.dumps({
        "passages": len(texts), "rounds": args.rounds, "threads": available_cpus(), "model": config.base_model,
        "plain_passages_per_s": round(med(plain), 1),
        "pipeline_cold_passages_per_s": round(med(cold), 1),
        "pipeline_warm_passages_per_s": round(med(warm), 1),
        "ratio_cold": round(med([c / p for c, p in zip(cold, plain, strict=True)]), 3),
        "ratio_warm": round(med([w / p for w, p in zip(warm, plain, strict=True)]), 1),
    }, indent=2))


if __name__ == "__main__":
    main()
