"""Disk use of the pipeline over N nightly runs (not a test): does `artifacts_dir` stop growing?

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/disk_growth.py --runs 10
    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/disk_growth.py --runs 10 --passages 800 \
        --set training.epochs=1 training.checkpoint_steps=1000 --out /tmp/disk_growth

Each run does what the nightly schedule and the daemon's sensors do, through the CLI and the
sensors' own functions: `embed-pipeline run` (the training job), then, when the gate passed,
`embed-pipeline promote` (the promotion sensor's decision), then the retention sensor's
`apply_retention` with the config's retention settings. The config is the demo's
(data/demo_config.yaml, or --config) with `section.key=value` overrides (YAML values) and
`artifacts_dir` set to `--out`/artifacts; every run uses the same config, as a schedule does,
except `training.seed`, set to the run's number: a night brings new pairs, so each night's
candidate is a new model with its own cached vectors and shard embeddings (with one seed and the
same data, training on a CPU is deterministic and every night would retrain the same weights;
`--same-seed` shows that case).
How many runs, not how long each trains, shapes the disk: shorten training with --set, and the
corpus encode each new candidate costs with `--passages N` (a seeded sample of N passages of a
JSON-lines corpus; the curated and eval qrels and the search logs are cut to those passages, so
training and evaluation shrink with it).

After each run it prints the disk use (allocated blocks, MiB) of each top-level entry of
`artifacts_dir` and the total, then the whole table again at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent


def write_config(source: Path, overrides: list[str], artifacts: Path, target: Path, passages: int = 0,
                 seed: int | None = None) -> Path:
    """The source YAML with overrides, its relative paths made absolute, `artifacts_dir` replaced, and
    with `passages` > 0 the inputs cut to a sample of that many passages (`subset_inputs`)."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))

    def absolute(value):
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, str) and (source.parent / value).exists():
            return str((source.parent / value).resolve())
        return value

    raw = absolute(raw)
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    raw["artifacts_dir"] = str(artifacts)
    if seed is not None:
        raw.setdefault("training", {})["seed"] = seed
    target.parent.mkdir(parents=True, exist_ok=True)
    if passages:
        raw = subset_inputs(raw, passages, target.parent)
    target.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return target


def subset_inputs(raw: dict, passages: int, folder: Path) -> dict:
    """`raw` with its corpus cut to a seeded sample of `passages` lines, and the qrels and search logs
    cut to the passages kept (written under `folder`)."""
    import random

    import pandas as pd

    lines = Path(raw["corpus"]).read_text(encoding="utf-8").splitlines(keepends=True)
    chosen = sorted(random.Random(0).sample(range(len(lines)), min(passages, len(lines))))
    kept_lines = [lines[i] for i in chosen]
    ids = {json.loads(line)["_id"] for line in kept_lines}
    (folder / "corpus.jsonl").write_text("".join(kept_lines), encoding="utf-8")
    raw = {**raw, "corpus": str(folder / "corpus.jsonl")}
    for section in ("curated_pairs", "eval"):
        if isinstance(raw.get(section), dict) and raw[section].get("qrels"):
            qrels = pd.read_csv(raw[section]["qrels"], sep="\t", dtype=str)
            target = folder / f"{section}_qrels.tsv"
            qrels[qrels["corpus-id"].isin(ids)].to_csv(target, sep="\t", index=False)
            raw[section] = {**raw[section], "qrels": str(target)}
    if raw.get("search_logs"):
        logs = pd.read_parquet(raw["search_logs"])
        logs[logs["passage_id"].isin(ids)].to_parquet(folder / "search_logs.parquet", index=False)
        raw["search_logs"] = str(folder / "search_logs.parquet")
    return raw


def disk_use(path: Path) -> int:
    """Bytes allocated on disk for `path` and everything under it (what `du` counts)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_blocks * 512
    total = path.lstat().st_blocks * 512
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def measure(artifacts: Path) -> dict[str, int]:
    return {entry.name: disk_use(entry) for entry in sorted(artifacts.iterdir())} if artifacts.is_dir() else {}


def table(rows: list[dict]) -> str:
    columns = sorted({k for row in rows for k in row["sizes"]}, key=lambda k: -max(r["sizes"].get(k, 0) for r in rows))
    head = ["run", "gate", "minutes", *columns, "total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        mib = [f"{row['sizes'].get(c, 0) / 2**20:.1f}" for c in columns]
        lines.append(f"| {row['run']} | {row['gate']} | {row['minutes']:.1f} | " + " | ".join(mib)
                     + f" | {sum(row['sizes'].values()) / 2**20:.1f} |")
    return "\n".join(lines)


def cli(*args: str, env: dict) -> int:
    command = [sys.executable, "-m", "embed_pipeline.cli", *args]
    return subprocess.run(command, env=env, cwd=PROJECT).returncode


def retain(config_path: Path, env: dict) -> str:
    """The retention sensor's function, in its own process (as the daemon runs it), with its summary."""
    code = ("import dagster as dg, sys\n"
            "from embed_pipeline.defs.resources import MlflowResource\n"
            "from embed_pipeline.defs.retention import apply_retention\n"
            "from embed_pipeline.lib.config import load_config\n"
            "result = apply_retention(load_config(sys.argv[1]), MlflowResource(), dg.DagsterInstance.get())\n"
            "print(result.summary())\n")
    done = subprocess.run([sys.executable, "-c", code, str(config_path)], env=env, cwd=PROJECT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"retention failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--config", type=Path, default=PROJECT / "data" / "demo_config.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument("--passages", type=int, default=0, help="a sample of N passages of the corpus only (0: all)")
    parser.add_argument("--same-seed", action="store_true", help="keep the config's training.seed on every run")
    parser.add_argument("--out", type=Path, default=Path("/tmp/embed_pipeline_disk_growth"))
    args = parser.parse_args()

    artifacts = args.out / "artifacts"
    config_path = write_config(args.config.resolve(), args.set, artifacts, args.out / "config.yaml", args.passages)
    env = {**os.environ, "DAGSTER_HOME": str(artifacts / "dagster_home")}
    print(f"config {config_path} (from {args.config} with {args.set or 'no overrides'}, "
          f"{args.passages or 'all'} passages); artifacts {artifacts}", flush=True)
    rows = []
    for run in range(1, args.runs + 1):
        started = time.monotonic()
        if not args.same_seed:
            write_config(args.config.resolve(), args.set, artifacts, config_path, args.passages, seed=run)
        code = cli("run", "--config", str(config_path), env=env)
        if code not in (0, 3):
            raise SystemExit(f"run {run}: embed-pipeline run exited {code}")
        gate = "passed" if code == 0 else "refused"
        if code == 0 and cli("promote", "--config", str(config_path), env=env) != 0:
            raise SystemExit(f"run {run}: embed-pipeline promote failed")
        removed = retain(config_path, env)
        rows.append({"run": run, "gate": gate, "minutes": (time.monotonic() - started) / 60, "sizes": measure(artifacts)})
        print(f"\nafter run {run} (gate {gate}; retention removed {removed}):\n{table(rows)}\n", flush=True)
    print(f"disk use of {artifacts} by top-level entry, MiB, after each run:\n{table(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
