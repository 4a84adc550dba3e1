"""How long a corpus_change_sensor tick takes on a large corpus: the first look, an unchanged tick, a one-passage edit.

    .venv/bin/python benchmarks/sensor_tick.py --passages 1000000

The corpus is synthetic (random words from a small vocabulary, ~40 words a passage): the tick's
cost depends on the file's size and row count, not on what the text says. An unchanged tick
compares the file's size and mtime with the cursor and reads nothing.
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import yaml

from embed_pipeline.defs.corpus_sensor import corpus_change_result
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.corpus import shard_keys

WORDS = "chain brake wheel cable gear tyre spoke rim hub pedal saddle bar stem fork frame bolt torque grease oil seal".split()


def write_corpus(path: Path, passages: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(passages):
            f.write(json.dumps({"_id": f"p{i}", "title": "", "text": " ".join(rng.choices(WORDS, k=40))}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sensor-tick-"))
    corpus = root / "corpus.jsonl"
    start = time.perf_counter()
    write_corpus(corpus, args.passages)
    print(f"wrote {args.passages:,} passages ({corpus.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    (root / "eval.jsonl").write_text(json.dumps({"query": "chain", "passage_id": "p0"}) + "\n")
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump({"corpus": "corpus.jsonl", "eval": "eval.jsonl", "artifacts_dir": "artifacts",
                                           "index": {"shards": args.shards}}))
    config = load_config(config_path)
    existing = shard_keys(args.shards)
    rows = []

    def tick(label: str, cursor):
        start = time.perf_counter()
        result = corpus_change_result(config, cursor, existing)
        seconds = time.perf_counter() - start
        rows.append((label, seconds, len(result.run_requests or [])))
        return result.cursor

    cursor = tick("first look (read + hash every shard)", None)
    cursor = tick("unchanged (stat only)", cursor)
    cursor = tick("unchanged again", cursor)
    with open(corpus, "a", encoding="utf-8") as f:  # one new passage
        f.write(json.dumps({"_id": "p-new", "title": "", "text": "a new passage about chain wear"}) + "\n")
    cursor = tick("one passage added (read + hash)", cursor)
    tick("unchanged after the edit", cursor)
    print(f"\n| tick ({args.passages:,} passages, {args.shards} shards) | seconds | runs requested |\n|---|---:|---:|")
    for label, seconds, runs in rows:
        print(f"| {label} | {seconds:.3f} | {runs} |")


if __name__ == "__main__":
    main()
