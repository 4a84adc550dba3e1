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
  training  `lib.fine_tune.fine_tune`, the `embedding_model` asset's function (dev split for
            checkpoint choice carved from the training queries, never the eval set; an MLflow run
            and a registered version in a scratch store under --out), seeded by `--seeds`;
  eval      `lib.evaluation.evaluate`, the `eval_report` asset's function, exactly as the demo
            judges its first candidate: the stock model serves first (dense), so it is the
            champion judged as served; the candidate in the config's `retrieval.mode` (hybrid:
            BM25 fused, the dense weight chosen on the dev queries), exact search over the whole
            corpus. Printed twice per seed: as the gate judges it, and dense against dense.
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
from embed_pipeline.lib.config import DEMO_CONFIG, parse_config  # noqa: E402
from embed_pipeline.lib.corpus import load_corpus, passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import embed_corpus_and_queries, encode_precision, load_model, model_fingerprint  # noqa: E402
from embed_pipeline.lib.evaluation import Contenders, EvalSet, evaluate  # noqa: E402
from embed_pipeline.lib.fine_tune import fine_tune  # noqa: E402
from embed_pipeline.lib.hardware import pick_device  # noqa: E402
from embed_pipeline.lib.labelled import load_labelled_pairs, relevance_map  # noqa: E402
from embed_pipeline.lib.leakage import decontaminate  # noqa: E402
from embed_pipeline.lib.lexical import LexicalIndex  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.pairs import PAIR_COLUMNS, merge_pairs  # noqa: E402
from embed_pipeline.lib.retrieval import dev_relevance  # noqa: E402
from embed_pipeline.lib.synthetic import inverse_cloze_pairs, round_trip_filter, sample_passages  # noqa: E402
from embed_pipeline.lib.tracking import Tracker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def derange(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every query takes another query's positives (a cyclic shift over a seeded permutation: no fixed point)."""
    groups = pairs.groupby("query", sort=True)["passage_id"].agg(list)
    order = np.random.default_rng(seed).permutation(len(groups))
    donors = np.roll(order, 1)
    rows = [(groups.index[r], pid) for r, d in zip(order, donors, strict=True) for pid in groups.iloc[d]]
    return pd.DataFrame(rows, columns=["query", "passage_id"]).assign(source="curated")


def demo_config(path: Path, overrides: list[str], seed: int, artifacts: Path):
    """The demo YAML with `section.key=value` overrides (values parsed as YAML: 2, 0.5, true, dense),
    `training.seed`, and the artifacts (MLflow store, checkpoints) under `artifacts`, validated as
    the pipeline validates a config file."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    raw.setdefault("training", {})["seed"] = seed
    raw["artifacts_dir"] = str(artifacts)
    return parse_config(raw, path.parent, f"{path.name} with {overrides}")


class Stages:
    """The demo's inputs loaded once, and the base model's vectors (through a per-invocation cache)."""

    def __init__(self, config, cache: Path, null: bool, null_seed: int):
        self.config, self.cache, self.seconds, self.cpu_seconds = config, cache, {}, {}
        self.passages = load_corpus(config.corpus).passages
        self.ids = list(self.passages["passage_id"])
        self.texts = passage_texts(self.passages)
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
        self.base_fingerprint = model_fingerprint(load_model(self.base))

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

    def train(self, pairs: pd.DataFrame, config, out: Path, seed: int):
        """Mining with the base model, then `fine_tune` (what the `hard_negatives` and `embedding_model` assets run)."""
        query_texts = list(dict.fromkeys(pairs["query"]))
        base = self.timed("base encode (mining)", self.embed, self.base, query_texts)
        mined = self.timed("mining", mine_hard_negatives, pairs[PAIR_COLUMNS], query_texts, base.query_vectors, self.ids,
                           base.corpus_vectors, config.mining, self.skip_above)
        triples = mined.triples.merge(pairs[["query", "passage_id", "source", "positive_text"]].drop_duplicates(["query", "passage_id"]),
                                      on=["query", "passage_id"], how="left")
        model = self.timed(f"training seed {seed}", fine_tune, self.passages, triples, config,
                           Tracker(config.tracking_uri, config.mlflow_artifacts_uri), model_dir=out / "model",
                           checkpoint_root=out / "checkpoints", data_versions={"demo_lift": f"seed{seed}"},
                           base_fingerprint=self.base_fingerprint, tags={"benchmark": "demo_lift"},
                           on_progress=lambda m: say("  " + m))
        return model, dev_relevance(model.held_out)

    def judge(self, config, candidate: str, lexical, dev: tuple[list[str], dict], mode: str) -> dict:
        """`evaluate` as the demo's first eval: the stock model served dense is the champion."""
        def encode(model_ref: str, queries: list[str]):
            vectors = self.embed(model_ref, queries)
            return vectors.query_vectors, vectors.corpus_vectors

        retrieval = dataclasses.replace(config.retrieval, mode=mode)
        contenders = Contenders(base=self.base, candidate=candidate, champion=self.base,
                                champion_retrieval={"mode": "dense", "fusion": None, "dense_weight": None})
        models = {"base": config.base_model, "champion": {"name": config.base_model, "version": None},
                  "candidate": {"model_dir": candidate, "seed": config.training.seed}}
        return self.timed(f"eval ({mode})", evaluate, self.eval_set, self.eval_pairs, self.ids, contenders, encode, retrieval,
                          config.gate, models, precision=encode_precision(config.index.encode_precision, pick_device()),
                          lexical=lexical, dev_queries=dev[0], dev_relevant=dev[1]).report


def summary_row(label: str, seed: int, report: dict) -> dict:
    """One line: the judged rows (the report's `judged`: candidate vs champion, each as it would serve)."""
    ci = report["ci"]["recall@10"]
    judged = [s for s in report["segments"] if s["queries"] >= 30]
    worst = min(judged, key=lambda s: s["recall@10_lift"])
    candidate, champion = report["judged"]["candidate"], report["judged"]["champion"]
    weight = report["retrieval"]["dense_weight"]
    return {"seed": seed, "judged": label + (f" (w {weight})" if weight is not None else ""),
            "stock r@10": report[champion]["recall@10"], "tuned r@10": report[candidate]["recall@10"],
            "lift": report["lift"]["recall@10"], "CI low": ci["low"], "CI high": ci["high"],
            "stock nDCG@10": report[champion]["ndcg@10"], "tuned nDCG@10": report[candidate]["ndcg@10"],
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
    args.out = args.out.resolve()  # the config resolves relative paths against its own folder (data/), not the cwd

    config = demo_config(args.config, args.set, 0, args.out / "scratch")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="cache-", dir=args.out))
    start = time.perf_counter()
    stages = Stages(config, cache, args.null, args.null_seed)
    say(f"demo: {len(stages.ids)} passages, {len(stages.eval_set.queries)} eval queries, {len(stages.curated)} curated pairs"
        f"{' (deranged: null test)' if args.null else ''}, {len(stages.clicks)} click pairs; training {config.training}")
    pairs, pair_stats = stages.timed("pairs (clicks, curated, synthetic, merge)", stages.training_pairs)
    say(f"training pairs: {len(pairs)} {pair_stats}")
    lexical = stages.timed("bm25 index", LexicalIndex.build, stages.ids, stages.texts, config.retrieval.lexical_language)
    modes = ["dense"] if args.no_hybrid else list(dict.fromkeys([config.retrieval.mode, "dense", "hybrid"]))
    rows, label = [], "null" if args.null else "demo"
    for seed in args.seeds:
        out = args.out / f"{label}-seed{seed}"
        seeded = demo_config(args.config, args.set, seed, out / "scratch")
        say(f"seed {seed}: mining + fine_tune")
        model, dev = stages.train(pairs, seeded, out, seed)
        result = model.training
        say(f"seed {seed}: {result.steps} steps on {model.training_rows} rows in {result.train_seconds:.0f} s "
            f"+ {result.dev_seconds:.0f} s dev eval ({model.training.pairs_per_second:.2f} pairs/s, bf16 {result.bf16}), "
            f"best dev nDCG@10 {result.best_dev_ndcg_at_10}")
        reports = {mode: stages.judge(seeded, str(model.model_dir), lexical, dev, mode) for mode in modes}
        record = {"seed": seed, "null": args.null, "pairs": pair_stats,
                  "training": {"rows": model.training_rows, "dev_queries": model.dev_queries, "steps": result.steps,
                               "train_seconds": result.train_seconds, "dev_seconds": result.dev_seconds,
                               "best_dev_ndcg@10": result.best_dev_ndcg_at_10, "bf16": result.bf16},
                  "seconds": dict(stages.seconds), "cpu_seconds": dict(stages.cpu_seconds), "reports": reports,
                  "config": {"training": dataclasses.asdict(seeded.training), "synthetic": dataclasses.asdict(seeded.synthetic),
                             "retrieval": dataclasses.asdict(seeded.retrieval)}}
        (out / "result.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        for mode, report in reports.items():
            rows.append(summary_row(mode + (" (the demo's gate)" if mode == config.retrieval.mode else ""), seed, report))
            segs = [f"{s['kind']}={s['segment']}({s['queries']}) {s['champion_recall@10']:.3f}->{s['candidate_recall@10']:.3f}"
                    for s in report["segments"]]
            say(f"seed {seed} {mode} segments: " + "; ".join(segs))
        print(pd.DataFrame(rows).round(4).to_markdown(index=False), flush=True)
    say(f"stage wall seconds: {stages.seconds}; total {time.perf_counter() - start:.0f} s")
    say(f"stage CPU seconds (all threads; / torch threads ~ wall when the machine is not shared): {stages.cpu_seconds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
