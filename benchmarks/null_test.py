"""The null test on the demo: train on positives shuffled across queries; the gate must refuse.

Writes, under --out (default: a new temp dir), a copy of the demo config whose curated qrels are a
derangement of the real ones (every query gets another query's passages), with click and synthetic
pairs switched off (they would carry real signal), its own artifacts dir, MLflow store and
DAGSTER_HOME. Then runs `embed-pipeline run --json` on it and prints the report's headline, the
bootstrap interval and the gate. Exit code: 0 when the gate refused (the expected outcome), 1 when
it promoted the null model (the gate is broken), 2 when the run itself failed.

    nice -n 10 .venv/bin/python benchmarks/null_test.py [--out DIR] [--seed 0]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo_config.yaml"


def shuffled_qrels(qrels: Path, seed: int) -> pd.DataFrame:
    """The same queries and passages, each query's positives moved to another query (no fixed point)."""
    frame = pd.read_csv(qrels, sep="\t", dtype=str)
    frame.columns = ["query-id", "corpus-id", "score"]
    groups = frame.groupby("query-id", sort=True)["corpus-id"].apply(list)
    order = np.random.default_rng(seed).permutation(len(groups))
    donors = np.roll(order, 1)  # query order[i] takes the positives of query order[i-1]: a derangement
    rows = []
    for receiver, donor in zip(order, donors, strict=True):
        for pid in groups.iloc[donor]:
            rows.append((groups.index[receiver], pid, "1"))
    out = pd.DataFrame(rows, columns=frame.columns)
    kept = out.merge(frame, on=["query-id", "corpus-id"]).shape[0]
    print(f"shuffled {len(groups)} curated queries; {kept} pairs kept their original passage by coincidence", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="embed-null-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)

    config = yaml.safe_load(DEMO.read_text())
    data = DEMO.parent
    qrels = out / "curated_shuffled.tsv"
    shuffled_qrels(data / config["curated_pairs"]["qrels"], args.seed).to_csv(qrels, sep="\t", index=False)
    config.update({
        "corpus": str(data / config["corpus"]),
        "curated_pairs": {"queries": str(data / config["curated_pairs"]["queries"]), "qrels": str(qrels)},
        "eval": {k: str(data / v) for k, v in config["eval"].items()},
        "search_logs": None,
        "synthetic": {**config.get("synthetic", {}), "max_share": 0.0},
        "artifacts_dir": str(out / "artifacts"),
        "registered_model_name": "embed-pipeline-null",
    })
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "DAGSTER_HOME": str(out / "dagster_home"), "HF_HUB_OFFLINE": "1", "EMBED_PIPELINE_CONFIG": ""}
    (out / "dagster_home").mkdir(exist_ok=True)
    cli = Path(sys.executable).parent / "embed-pipeline"
    print(f"running {cli} run --config {config_path} --json (artifacts in {out})", file=sys.stderr)
    proc = subprocess.run([str(cli), "run", "--config", str(config_path), "--json"], env=env, stdout=subprocess.PIPE, text=True)
    if not proc.stdout.strip():
        print(f"the run failed before the report (exit {proc.returncode})", file=sys.stderr)
        return 2
    report = json.loads(proc.stdout)
    (out / "null_report.json").write_text(json.dumps(report, indent=2))
    summary = {
        "exit_code": proc.returncode,
        "eval_queries": report["eval"]["queries"],
        **{f"{model} recall@10": report[model]["recall@10"] for model in ("base", "champion", "candidate")},
        **{f"{model} ndcg@10": report[model]["ndcg@10"] for model in ("base", "champion", "candidate")},
        "ci": report["ci"],
        "gate_passed": report["gate"]["passed"],
        "gate": report["gate"]["summary"],
    }
    print(json.dumps(summary, indent=2))
    return 0 if not report["gate"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
