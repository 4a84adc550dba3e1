"""Corpus encoding on a real two-node Ray cluster (head + one more node, one CPU each, loopback
only): the same files as the local path, work on both nodes (read from Ray's state), only the
uncached passages sent, and a node lost mid-encode never leaves a partial shard set."""

from pathlib import Path

import numpy as np
import pytest

from embed_pipeline_tests.fixture_data import PASSAGES
from embed_pipeline_tests.ray_cluster import require_cluster, run_scenario

# 100 distinct passages (the fixture passages in five phrasings), ids p000..p099, in 4 shards.
TEXTS = [f"{title} note {n}: {text}" for n in range(5) for title, text in PASSAGES.values()]
IDS = [f"p{i:03d}" for i in range(len(TEXTS))]
SHARDS = 4
EDITED = 37


def _corpus(texts: list[str]):
    """(dataset, its shard keys): the corpus dataset of `texts`, in a fresh temporary folder."""
    import tempfile

    import pandas as pd

    from embed_pipeline_tests.fixture_data import build_dataset

    frame = pd.DataFrame({"passage_id": IDS, "title": "", "text": texts})
    dataset = build_dataset(frame, tempfile.mkdtemp(prefix="ray-corpus-"), SHARDS)
    return dataset, dataset.keys


def _compute(cluster, **overrides):
    from embed_pipeline.lib.config import ComputeConfig

    settings = {"engine": "ray", "ray_address": cluster.address, "connect_timeout_seconds": 30, "encode_actors": 2,
                "encode_cpus_per_actor": 1, "encode_batch_size": 8, **overrides}
    return ComputeConfig(**settings)


def _actor_nodes() -> list[str]:
    """Node ids of every encode actor that was placed, alive or finished (Ray's state API; an actor
    the pool asked for but never placed has no node)."""
    from ray.util.state import list_actors

    return sorted({a.node_id for a in list_actors(limit=10_000, raise_on_missing_output=False)
                   if _is_encode_actor(a.class_name) and a.node_id})


def _is_encode_actor(class_name: str) -> bool:
    """An encode actor of either kind: fed texts (`EncodeActor`) or dataset row groups (`StoreWriterActor`)."""
    return "EncodeActor" in class_name or "StoreWriterActor" in class_name


def encode_three_ways(cluster, model_path: str, root: str) -> dict:
    """Scenario: shards and a corpus+queries encode through the cluster, then a re-run with one passage edited."""
    import ray

    from embed_pipeline.lib.encoding import embed_corpus_and_queries, load_model, model_fingerprint
    from embed_pipeline.lib.ray_encoding import RayEncoding
    from embed_pipeline.lib.shards import embed_shards

    root = Path(root)
    model = load_model(model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    on_cluster = RayEncoding(_compute(cluster), root / "artifacts")
    first = embed_shards(model, fingerprint, *_corpus(TEXTS), root / "ray" / "shards", root / "ray" / "cache", batch_size=8,
                         cluster=on_cluster)
    nodes_alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    actor_nodes = _actor_nodes()
    first_meta = on_cluster.metadata()

    edited = list(TEXTS)
    edited[EDITED] = "Wrap the handlebar tape from the bar end towards the stem, overlapping each turn by a third."
    again = RayEncoding(_compute(cluster), root / "artifacts")
    second = embed_shards(model, fingerprint, *_corpus(edited), root / "ray" / "shards-edited", root / "ray" / "cache",
                          batch_size=8, cluster=again)

    both = RayEncoding(_compute(cluster), root / "artifacts")
    pair = embed_corpus_and_queries(model_path, TEXTS, ["oil my chain"], root / "ray" / "cache-eval", batch_size=8,
                                    threads=1, cluster=both)
    np.save(root / "ray" / "eval-corpus.npy", pair.corpus_vectors)
    return {
        "nodes_alive": nodes_alive,
        "actor_nodes": actor_nodes,
        "first": {k: [s.encoded, s.reused, s.precision] for k, s in first.items()},
        "second": {k: [s.encoded, s.reused] for k, s in second.items()},
        "first_meta": first_meta,
        "second_rows": again.metadata()["ray_rows_encoded"],
        "eval_rows": both.metadata()["ray_rows_encoded"],
        "eval_stats": [pair.corpus_stats.encoded, pair.corpus_stats.precision],
    }


@pytest.mark.slow
def test_ray_encoding_equals_local_encoding(tiny_model_path, tmp_path):
    require_cluster()
    from embed_pipeline.lib.encoding import embed_corpus_and_queries, load_model, model_fingerprint
    from embed_pipeline.lib.shards import embed_shards, read_shard_embeddings, shard_precision

    out = run_scenario("embed_pipeline_tests.test_ray_encoding:encode_three_ways",
                       {"model_path": tiny_model_path, "root": str(tmp_path)}, tmp_path / "cluster")

    # The work really ran on both nodes: the encode actors' node ids, from Ray's state.
    assert len(out["nodes_alive"]) == 2
    assert out["actor_nodes"] == out["nodes_alive"]
    assert out["first_meta"]["ray_nodes_used"] == 2 and out["first_meta"]["ray_rows_encoded"] == len(TEXTS)
    assert out["first_meta"]["ray_dashboard"].startswith("http://127.0.0.1:")

    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    local = embed_shards(model, fingerprint, *_corpus(TEXTS), tmp_path / "local" / "shards", tmp_path / "local" / "cache",
                         batch_size=8)
    assert {k: [s.encoded, s.reused, s.precision] for k, s in local.items()} == out["first"]
    # Same shard files, same cache keys (the cache space names carry fingerprint, prompt and precision).
    ray_shards, local_shards = tmp_path / "ray" / "shards", tmp_path / "local" / "shards"
    assert sorted(p.name for p in ray_shards.iterdir()) == sorted(p.name for p in local_shards.iterdir())
    assert sorted(p.name for p in (tmp_path / "ray" / "cache").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local" / "cache").iterdir())
    for shard in local_shards.iterdir():
        ids, vectors = read_shard_embeddings(shard)
        ray_ids, ray_vectors = read_shard_embeddings(ray_shards / shard.name)
        assert ray_ids == ids
        assert shard_precision(ray_shards / shard.name) == shard_precision(shard)
        assert np.min(np.sum(vectors * ray_vectors, axis=1)) >= 0.9999

    # Only the uncached passage went to the cluster on the re-run.
    assert out["second_rows"] == 1
    assert sum(encoded for encoded, _ in out["second"].values()) == 1

    # The eval's corpus side through the cluster equals it encoded here.
    here = embed_corpus_and_queries(tiny_model_path, TEXTS, ["oil my chain"], tmp_path / "local" / "cache-eval",
                                    batch_size=8, threads=1)
    assert out["eval_rows"] == len(TEXTS) and out["eval_stats"] == [len(TEXTS), here.corpus_stats.precision]
    remote = np.load(tmp_path / "ray" / "eval-corpus.npy")
    assert np.min(np.sum(here.corpus_vectors * remote, axis=1)) >= 0.9999


def lose_a_node_mid_encode(cluster, model_path: str, root: str) -> dict:
    """Scenario: the non-head node is killed as soon as the first encoded rows arrive."""
    import embed_pipeline.lib.ray_encoding as ray_encoding
    from embed_pipeline.lib.encoding import load_model, model_fingerprint
    from embed_pipeline.lib.shards import embed_shards

    root = Path(root)
    removed: list[str] = []
    actors_there: list[int] = []

    def on_progress(line: str) -> None:
        if not removed:
            from ray.util.state import list_actors

            node = cluster.worker_nodes[0].node_id
            actors_there.append(sum(a.node_id == node and _is_encode_actor(a.class_name)
                                    for a in list_actors(filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)))
            removed.append(cluster.remove_worker())

    ray_encoding.PROGRESS_EVERY_SECONDS = 0  # a progress call per arriving batch: the first one triggers the loss
    model = load_model(model_path, device="cpu")
    on_cluster = ray_encoding.RayEncoding(_compute(cluster), root / "artifacts", on_progress=on_progress)
    try:
        embed_shards(model, model_fingerprint(model), *_corpus(TEXTS), root / "ray" / "shards", root / "ray" / "cache",
                     batch_size=8, cluster=on_cluster)
    except Exception as exc:  # the other allowed outcome: one clear error, reported to the test
        return {"removed": removed, "actors_there": actors_there, "error": f"{type(exc).__name__}: {exc}"}
    return {"removed": removed, "actors_there": actors_there, "error": None, "meta": on_cluster.metadata(),
            "runs": [[r.rows, r.repeated_rows, r.nodes] for r in on_cluster.runs]}


@pytest.mark.slow
def test_a_node_lost_mid_encode_never_leaves_a_partial_shard_set(tiny_model_path, tmp_path):
    require_cluster()
    from embed_pipeline.lib.encoding import load_model, model_fingerprint
    from embed_pipeline.lib.shards import embed_shards, read_shard_embeddings

    out = run_scenario("embed_pipeline_tests.test_ray_encoding:lose_a_node_mid_encode",
                       {"model_path": tiny_model_path, "root": str(tmp_path)}, tmp_path / "cluster")
    assert len(out["removed"]) == 1, "the node was never removed: the encode finished before any progress"
    assert out["actors_there"] == [1], "the removed node held no live encode actor"
    ray_shards = tmp_path / "ray" / "shards"
    if out["error"] is not None:
        assert not ray_shards.exists() or not any(ray_shards.iterdir()), "a failed encode left shard files"
        pytest.fail(f"the encode did not survive the lost node: {out['error']}")
    model = load_model(tiny_model_path, device="cpu")
    local = embed_shards(model, model_fingerprint(model), *_corpus(TEXTS), tmp_path / "local", tmp_path / "local-cache",
                         batch_size=8)
    ids = []
    for key, shard in local.items():
        expected_ids, expected = read_shard_embeddings(shard.path)
        got_ids, got = read_shard_embeddings(ray_shards / shard.path.name)
        assert got_ids == expected_ids
        assert np.min(np.sum(expected * got, axis=1)) >= 0.9999
        ids += got_ids
    assert sorted(ids) == IDS  # every passage exactly once
    assert out["meta"]["ray_rows_encoded"] == len(TEXTS)


def dagster_step_on_the_cluster(cluster, project: str) -> dict:
    """Scenario: `corpus_embeddings` (every shard in one run) materialised with `compute.engine: ray`."""
    import dagster as dg
    import yaml

    import embed_pipeline.lib.ray_encoding as ray_encoding
    from embed_pipeline.defs.assets.serving import corpus_embeddings
    from embed_pipeline.defs.partitions import corpus_shards
    from embed_pipeline.defs.resources import PipelineResource
    from embed_pipeline.lib.corpus import shard_key, shard_keys

    config_path = Path(project)
    config = yaml.safe_load(config_path.read_text())
    config["compute"] = {"engine": "ray", "ray_address": cluster.address, "encode_actors": 1, "encode_batch_size": 4}
    # engine ray requires a tracking server in the config (training workers log to it); this step
    # never contacts MLflow, so the address is only checked for its form.
    config["mlflow_tracking_uri"] = "http://127.0.0.1:9"
    config_path.write_text(yaml.safe_dump(config))
    ray_encoding.PROGRESS_EVERY_SECONDS = 0  # a progress line per arriving batch
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(corpus_shards.name, shard_keys(SHARDS))
    result = dg.materialize([corpus_embeddings], instance=instance,
                            resources={"pipeline": PipelineResource(config_path=str(config_path))},
                            tags={"dagster/asset_partition_range_start": shard_key(0, SHARDS),
                                  "dagster/asset_partition_range_end": shard_key(SHARDS - 1, SHARDS)})
    meta = result.asset_materializations_for_node("corpus_embeddings")[0].metadata
    logs = [e.user_message for e in instance.all_logs(result.run_id) if "ray encode:" in e.user_message]
    return {"success": result.success, "logs": logs,
            "meta": {k: getattr(v, "value", v) for k, v in meta.items() if k.startswith(("ray_", "passages_", "shards"))},
            "dashboard_is_url": isinstance(meta["ray_dashboard"], dg.UrlMetadataValue)}


@pytest.mark.slow
def test_the_dagster_step_streams_progress_and_links_the_ray_job(tmp_path, tiny_model_path):
    require_cluster()
    from embed_pipeline_tests.fixture_data import PASSAGES as FIXTURE, write_project

    project = write_project(tmp_path / "project", tiny_model_path, index={"shards": SHARDS})
    out = run_scenario("embed_pipeline_tests.test_ray_encoding:dagster_step_on_the_cluster", {"project": str(project)},
                       tmp_path / "cluster", nodes=1)
    assert out["success"]
    meta = out["meta"]
    assert meta["passages_encoded"] == len(FIXTURE) and meta["shards"] == SHARDS
    assert meta["ray_rows_encoded"] == len(FIXTURE) and meta["ray_nodes_used"] == 1
    assert out["dashboard_is_url"] and meta["ray_dashboard"].endswith(f"/#/jobs/{meta['ray_job_id']}")
    streamed = [line for line in out["logs"] if f"/{len(FIXTURE)} rows" in line]
    assert streamed and streamed[-1].startswith(f"ray encode: {len(FIXTURE)}/{len(FIXTURE)} rows (100%)")
    assert all("actor(s) alive" in line for line in streamed)
    assert out["logs"][-1].startswith(f"ray encode: {len(FIXTURE)} rows in ")
