"""The bundled demo's lift: stock vs fine-tuned on the demo config, through the pipeline's lib stages (not a test).

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/demo_lift.py --seeds 1 2
    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/demo_lift.py --seeds 1 --null

Runs what `embed-pipeline run` runs on `data/demo_config.yaml`, stage by stage from `lib/`, with the
config's own settings (override any with `--set training.epochs=2`):
  pairs     click pairs (`lib.click_logs`), curated pairs (`lib.labelled`), offline synthetic pairs
            (`lib.synthetic`: inverse cloze + titles, round trip through the base model), merged
            (`lib.pairs.merge_pairs`) and decontaminated against the eval queries (`lib.leakage`);
  mining    `lib.negatives.mine_hard_negatives` with the base model (skip-above clicks as extra
            candidates);
  training  `lib.training.train_model` (dev split for checkpoint choice carved from the training
            queries, never the eval set), seeded by `--seeds` (training.seed);
  eval      exact search over the whole corpus for the stock and the tuned model;
            `lib.evaluation.assemble_report` gives the metrics, the paired-bootstrap CI of the lift,
            the segment table and the gate's verdict with the stock model as champion (the
            first-run situation). Hybrid (BM25 fused by `lib.fusion`, dense weight chosen on the
            dev queries against the full corpus) is reported beside it, judged the same way.
`--null` is the null test: curated positives moved to other queries (a derangement, as
benchmarks/null_test.py does through the CLI), click and synthetic pairs off: the gate must refuse.

Prints stage timings (a cold embedding cache per invocation, so the base model's corpus encoding
counts once, as on a fresh clone) and one summary row per seed; writes every report to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib.click_logs import pairs_from_search_logs  # noqa: E402
from embed_pipeline.lib.config import DEMO_CONFIG, load_config  # noqa: E402
from embed_pipeline.lib.corpus import load_corpus, passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import embed_corpus_and_queries  # noqa: E402
from embed_pipeline.lib.evaluation import EvalSet, assemble_report, rank_exact  # noqa: E402
from embed_pipeline.lib.fusion import choose_dense_weight, fuse  # noqa: E402
from embed_pipeline.lib.labelled import load_labelled_pairs, relevance_map  # noqa: E402
from embed_pipeline.lib.leakage import decontaminate  # noqa: E402
from embed_pipeline.lib.lexical import LexicalIndex  # noqa: E402
from embed_pipeline.lib.metrics import MAX_K  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.pairs import PAIR_COLUMNS, merge_pairs  # noqa: E402
from embed_pipeline.lib.synthetic import inverse_cloze_pairs, round_trip_filter, sample_passages  # noqa: E402
from embed_pipeline.lib.training import train_model  # noqa: E402
from embed_pipeline.lib.training_data import dev_set, split_dev, training_columns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 100


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def derange(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every query takes another query's positives (a cyclic shift over a seeded permutation: no fixed point)."""
    groups = pairs.groupby("query", sort=True)["passage_id"].agg(list)
    order = np.random.default_rng(seed).permutation(len(groups))
    donors = np.roll(order, 1)
    rows = [(groups.index[r], pid) for r, d in zip(order, donors, strict=True) for pid in groups.iloc[d]]
    return pd.DataFrame(rows, columns=["query", "passage_id"]).assign(source="curated")


def with_overrides(config, items: list[str]):
    """`section.key=value` overrides of the config (value parsed as YAML: 2, 0.5, true, dense)."""
    import yaml

    for item in items:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        part = getattr(config, section)
        config = dataclasses.replace(config, **{section: dataclasses.replace(part, **{name: yaml.safe_load(value)})})
    return config


class Stages:
    """The demo's inputs loaded once, and the base model's vectors (through a per-invocation cache)."""

    def __init__(self, config, cache: Path, null: bool, null_seed: int):
        self.config, self.cache, self.seconds, self.cpu_seconds = config, cache, {}, {}
        self.passages = load_corpus(config.corpus).passages
        self.ids = list(self.passages["passage_id"])
        self.texts = passage_texts(self.passages)
        self.text_of = dict(zip(self.ids, self.texts, strict=True))
        known = set(self.ids)
        loaded = load_labelled_pairs(config.eval, known)
        self.eval_pairs = loaded.pairs
        self.eval_set = EvalSet(loaded.pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict(),
                                relevance_map(loaded.pairs))
        curated = load_labelled_pairs(config.curated_pairs, known).pairs.assign(source="curated")
        self.curated = derange(curated, null_seed) if null else curated[PAIR_COLUMNS]
        if null or config.search_logs is None:
            self.clicks, self.skip_above = pd.DataFrame(columns=PAIR_COLUMNS), {}
        else:
            logs = pairs_from_search_logs(pd.read_parquet(config.search_logs), known, config.search_log_rules)
            self.clicks = logs.pairs[PAIR_COLUMNS]
            self.skip_above = logs.skip_above.groupby("query")["passage_id"].agg(list).to_dict() if len(logs.skip_above) else {}
        self.null = null
        self.base = config.resolved_base_model

    def embed(self, model_ref: str, queries: list[str]):
        c = self.config
        return embed_corpus_and_queries(model_ref, self.texts, queries, self.cache, c.encode_batch_size,
                                        c.corpus_prompt, c.query_prompt, c.index.encode_threads)

    def timed(self, name: str, fn, *args, **kwargs):
        """Call `fn`, adding its wall seconds to `seconds[name]` and this process's CPU seconds (all
        threads) to `cpu_seconds[name]`: on a shared machine, CPU seconds / threads estimates the
        wall time the stage would take alone."""
        start, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)
        self.cpu_seconds[name] = round(self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu, 1)
        return out

    def training_pairs(self) -> tuple[pd.DataFrame, dict]:
        s = self.config.synthetic
        synthetic = pd.DataFrame(columns=PAIR_COLUMNS + ["positive_text"])
        stats = {}
        if not self.null and s.max_share > 0:
            generated = inverse_cloze_pairs(sample_passages(self.passages, s.max_passages, s.seed), s.pairs_per_passage,
                                            s.min_query_words, s.seed)
            base = self.timed("synthetic round trip (base corpus + queries)", self.embed, self.base, list(generated["query"]))
            kept, _ = round_trip_filter(generated, base.query_vectors, self.ids, base.corpus_vectors, s.round_trip_k)
            synthetic = kept if s.round_trip else generated
            stats = {"synthetic_generated": len(generated), "synthetic_kept": len(synthetic),
                     "synthetic_by_method": synthetic["method"].value_counts().to_dict()}
        merged = merge_pairs([self.clicks, self.curated, synthetic], s.max_share, s.seed, self.config.merge.quotas)
        lk = self.config.leakage
        clean = decontaminate(merged.pairs, list(self.eval_set.queries.values()), lk.near_duplicate_jaccard, lk.shingle_words)
        stats.update(per_source=merged.per_source, leaking_pairs_dropped=clean.dropped_pairs)
        return clean.pairs, stats

    def train(self, pairs: pd.DataFrame, training, out: Path) -> tuple[object, list[str], dict]:
        query_texts = list(dict.fromkeys(pairs["query"]))
        base = self.timed("base encode (mining)", self.embed, self.base, query_texts)
        mined = self.timed("mining", mine_hard_negatives, pairs[PAIR_COLUMNS], query_texts, base.query_vectors, self.ids,
                           base.corpus_vectors, self.config.mining, self.skip_above)
        triples = mined.triples.merge(pairs[["query", "passage_id", "source", "positive_text"]].drop_duplicates(["query", "passage_id"]),
                                      on=["query", "passage_id"], how="left")
        fit_rows, dev_rows = split_dev(triples, training.dev_share, training.dev_max_queries, training.seed)
        dev = dev_set(dev_rows, self.text_of, training.dev_max_passages, training.seed) if len(dev_rows) else None
        columns, padded = training_columns(fit_rows, self.text_of, training.num_negatives, training.seed)
        # Beside the model, so a killed run resumes from its last checkpoint (train_model deletes them when done).
        result = self.timed(f"training seed {training.seed}", train_model, self.base, columns, training, out,
                            out.parent / "checkpoints", dev=dev, on_progress=lambda m: say("  " + m))
        dev_queries = list(dev_rows["query"].unique())
        dev_relevant = dev_rows.groupby("query")["passage_id"].agg(set).to_dict()
        return result, dev_queries, {"train_rows": len(columns["anchor"]), "padded_negatives": padded,
                                     "dev_queries": len(dev_queries), "dev_relevant": dev_relevant}

    def rankings(self, model_ref: str, name: str) -> tuple[dict[str, list[str]], tuple, object]:
        """Exact top-`MAX_K` eval rankings (by query id) and the raw (ids, scores) lists for fusion."""
        queries = list(self.eval_set.queries.values())
        vectors = self.timed(f"encode corpus + eval queries ({name})", self.embed, model_ref, queries)
        scores = vectors.query_vectors @ vectors.corpus_vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH]
        ranked = [[self.ids[i] for i in row] for row in top]
        exact = rank_exact(vectors.query_vectors, vectors.corpus_vectors, self.ids, MAX_K)
        return dict(zip(self.eval_set.queries, exact, strict=True)), (ranked, np.take_along_axis(scores, top, axis=1)), vectors


def dense_lists(vectors, ids: list[str], query_vectors: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    scores = query_vectors @ vectors.corpus_vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH]
    return [[ids[i] for i in row] for row in top], np.take_along_axis(scores, top, axis=1)


def report_for(stages: Stages, base: dict, tuned: dict, models: dict) -> dict:
    rankings = {"base": base, "champion": base, "candidate": tuned, "candidate_exact": tuned}
    report, _ = assemble_report(stages.eval_set, stages.eval_pairs, rankings, models, stages.config.gate)
    return report


def hybrid(stages: Stages, lexical: LexicalIndex, model_ref: str, dense_eval, dev_queries: list[str], dev_relevant: dict) -> tuple[dict, float]:
    """Eval rankings of `model_ref` fused with BM25, the convex dense weight chosen on the dev queries."""
    r = stages.config.retrieval
    dev_vectors = stages.embed(model_ref, dev_queries)
    dev_dense = dense_lists(dev_vectors, stages.ids, dev_vectors.query_vectors)
    weight = r.dense_weight
    if weight is None:
        weight, _ = choose_dense_weight(dev_dense, lexical.search(dev_queries, DEPTH), dev_relevant, dev_queries,
                                        method=r.fusion, rrf_k=r.rrf_k)
    queries = list(stages.eval_set.queries.values())
    fused = fuse(dense_eval, lexical.search(queries, DEPTH), r.fusion, weight, MAX_K, r.rrf_k)
    return dict(zip(stages.eval_set.queries, fused, strict=True)), weight


def summary_row(label: str, seed: int, report: dict) -> dict:
    ci = report["ci"]["recall@10"]
    judged = [s for s in report["segments"] if s["queries"] >= 30]
    worst = min(judged, key=lambda s: s["recall@10_lift"])
    return {"seed": seed, "retrieval": label,
            "stock r@10": report["base"]["recall@10"], "tuned r@10": report["candidate"]["recall@10"],
            "lift": report["lift"]["recall@10"], "CI low": ci["low"], "CI high": ci["high"],
            "stock nDCG@10": report["base"]["ndcg@10"], "tuned nDCG@10": report["candidate"]["ndcg@10"],
            "worst segment": f"{worst['kind']}={worst['segment']} {worst['recall@10_lift']:+.3f}",
            "gate": "PASS" if report["gate"]["passed"] else "refused: " + report["gate"]["summary"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="training.seed per run")
    parser.add_argument("--null", action="store_true", help="null test: curated positives deranged, clicks and synthetic off")
    parser.add_argument("--null-seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "demo_lift")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: a fresh one under --out)")
    parser.add_argument("--no-hybrid", action="store_true", help="skip the hybrid (BM25-fused) rows")
    args = parser.parse_args()

    config = with_overrides(load_config(args.config), args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="cache-", dir=args.out))
    start = time.perf_counter()
    stages = Stages(config, cache, args.null, args.null_seed)
    say(f"demo: {len(stages.ids)} passages, {len(stages.eval_set.queries)} eval queries, {len(stages.curated)} curated pairs"
        f"{' (deranged: null test)' if args.null else ''}, {len(stages.clicks)} click pairs; training {config.training}")
    pairs, pair_stats = stages.timed("pairs (clicks, curated, synthetic, merge)", stages.training_pairs)
    say(f"training pairs: {len(pairs)} {pair_stats}")
    base_eval, base_lists, _ = stages.rankings(stages.base, "stock")
    lexical = None if args.no_hybrid else LexicalIndex.build(stages.ids, stages.texts, config.retrieval.lexical_language)
    rows, label = [], "null" if args.null else "demo"
    for seed in args.seeds:
        training = dataclasses.replace(config.training, seed=seed)
        out = args.out / f"{label}-seed{seed}"
        say(f"seed {seed}: mining + training")
        result, dev_queries, train_stats = stages.train(pairs, training, out / "model")
        say(f"seed {seed}: {result.steps} steps on {train_stats['train_rows']} rows in {result.train_seconds:.0f} s "
            f"+ {result.dev_seconds:.0f} s dev eval (bf16 {result.bf16}), best dev nDCG@10 {result.best_dev_ndcg_at_10}")
        tuned_eval, tuned_lists, _ = stages.rankings(str(result.model_dir), f"tuned seed {seed}")
        models = {"base": config.base_model, "champion": {"name": config.base_model, "version": None},
                  "candidate": {"model_dir": str(result.model_dir), "seed": seed}}
        reports = {"dense": report_for(stages, base_eval, tuned_eval, models)}
        weights = {}
        if lexical is not None:
            relevant = train_stats.pop("dev_relevant")
            base_h, weights["stock"] = hybrid(stages, lexical, stages.base, base_lists, dev_queries, relevant)
            tuned_h, weights["tuned"] = hybrid(stages, lexical, str(result.model_dir), tuned_lists, dev_queries, relevant)
            reports["hybrid"] = report_for(stages, base_h, tuned_h, models)
        else:
            train_stats.pop("dev_relevant")
        record = {"seed": seed, "null": args.null, "pairs": pair_stats, "training": {**train_stats, "steps": result.steps,
                  "train_seconds": result.train_seconds, "dev_seconds": result.dev_seconds,
                  "best_dev_ndcg@10": result.best_dev_ndcg_at_10, "bf16": result.bf16},
                  "hybrid_dense_weights": weights, "seconds": dict(stages.seconds), "cpu_seconds": dict(stages.cpu_seconds),
                  "reports": reports,
                  "config": {"training": dataclasses.asdict(training), "synthetic": dataclasses.asdict(config.synthetic)}}
        (out / "result.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        for name, report in reports.items():
            rows.append(summary_row(name if name == "dense" else f"hybrid (w {weights['stock']}/{weights['tuned']})", seed, report))
        for name, report in reports.items():
            segs = [f"{s['kind']}={s['segment']}({s['queries']}) {s['champion_recall@10']:.3f}->{s['candidate_recall@10']:.3f}"
                    for s in report["segments"]]
            say(f"seed {seed} {name} segments: " + "; ".join(segs))
        print(pd.DataFrame(rows).round(4).to_markdown(index=False), flush=True)
    say(f"stage wall seconds: {stages.seconds}; total {time.perf_counter() - start:.0f} s")
    say(f"stage CPU seconds (all threads; / torch threads ~ wall when the machine is not shared): {stages.cpu_seconds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
