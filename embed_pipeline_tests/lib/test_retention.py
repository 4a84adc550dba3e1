"""Retention over every folder the pipeline writes: what a kept run, the served model or a run in
progress needs stays, the rest of each kind goes (real folders on disk)."""

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from embed_pipeline.lib.encoding import EmbeddingCache
from embed_pipeline.lib.retention import apply_retention_plan

OLD = 1_000_000.0


def _age(path, seconds):
    """Set a folder's and its direct children's modification times (older = smaller)."""
    for item in [path, *path.iterdir()]:
        os.utime(item, (seconds, seconds))


def _write_run(root, handles, run, age, fingerprint):
    model = root / "assets" / "embedding_model" / run / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"w")
    dense = root / "assets" / "corpus_index" / run / "dense"
    dense.mkdir(parents=True)
    (dense / "index.json").write_text(json.dumps({"model_dir": str(model), "model_fingerprint": fingerprint}))
    (root / "runs" / run).mkdir(parents=True)
    (root / "runs" / run / "config.json").write_text("{}")
    (handles / run).mkdir(parents=True)
    (handles / run / "hard_negatives.json").write_text(
        json.dumps({"type": "NegativesHandle", "fields": {"base_model_fingerprint": "base"}}))
    (handles / run / "corpus_index.json").write_text(
        json.dumps({"type": "IndexHandle", "fields": {"model_fingerprint": fingerprint}}))
    EmbeddingCache(root / "embedding_cache", fingerprint, "", "fp32").put(["t"], np.ones((1, 4), np.float32))
    shards = root / "embeddings" / fingerprint
    shards.mkdir(parents=True)
    (shards / "shard-00-of-01.arrow").write_bytes(b"v")
    for folder in (model.parent, dense.parent, root / "runs" / run, handles / run, shards,
                   EmbeddingCache(root / "embedding_cache", fingerprint, "", "fp32").dir):
        _age(folder, OLD + age)


def _left(folder):
    return {p.name for p in folder.iterdir()}


def test_every_kind_of_folder_keeps_what_kept_runs_serving_and_running_runs_need(tmp_path):
    root, handles = tmp_path / "artifacts", tmp_path / "dagster_home" / "storage" / "handles"
    for i in range(6):  # run-5 is the newest
        _write_run(root, handles, f"run-{i}", i * 100, f"fp-{i}")
    base = EmbeddingCache(root / "embedding_cache", "base", "", "fp32")
    base.put(["t"], np.ones((1, 4), np.float32))
    _age(base.dir, OLD)
    for name, age in (("old-job", 0), ("older-job", -50), ("recent-job", 400), ("newest-job", 450)):
        (root / "checkpoints" / name / "checkpoint-20").mkdir(parents=True)
        _age(root / "checkpoints" / name, OLD + age)
    busy_since = time.time()
    # A run in progress: its candidate is written, its cache space and shard folder are new, its
    # corpus_index has not run yet (no meta names its fingerprint).
    busy_space = EmbeddingCache(root / "embedding_cache", "fp-busy", "", "fp32")
    busy_space.put(["t"], np.ones((1, 4), np.float32))
    (root / "embeddings" / "fp-busy").mkdir()
    (root / "runs" / "run-busy").mkdir()
    (root / "checkpoints" / "busy-job").mkdir()
    for folder in (busy_space.dir, root / "embeddings" / "fp-busy", root / "runs" / "run-busy", root / "checkpoints" / "busy-job"):
        _age(folder, busy_since + 10)
    served_index = root / "assets" / "corpus_index" / "run-0" / "dense"  # the oldest run serves
    served_model = root / "assets" / "embedding_model" / "run-0" / "model"

    result = apply_retention_plan(root, keep=2, protected={served_index, served_model}, busy_runs={"run-busy"},
                                  busy_since=busy_since, handles_dir=handles, pinned_runs={"run-2"})

    kept_runs = {"run-0", "run-4", "run-5"}
    assert _left(root / "assets" / "corpus_index") == kept_runs
    assert _left(root / "assets" / "embedding_model") == kept_runs
    # run-2 holds an asset's latest materialisation: its snapshot and handles stay.
    assert _left(root / "runs") == kept_runs | {"run-2", "run-busy"}
    assert _left(handles) == kept_runs | {"run-2"}
    kept_fingerprints = {"fp-0", "fp-4", "fp-5", "fp-2", "base"}
    assert result.kept_fingerprints == kept_fingerprints
    assert _left(root / "embeddings") == {"fp-0", "fp-2", "fp-4", "fp-5", "fp-busy"}
    spaces = {json.loads((p / "meta.json").read_text())["model_fingerprint"] for p in (root / "embedding_cache").iterdir()}
    assert spaces == kept_fingerprints | {"fp-busy"}
    assert _left(root / "checkpoints") == {"newest-job", "busy-job"}  # the newest two (one is being written)
    assert {k: len(v) for k, v in result.removed.items()} == {
        "asset folders": 6, "run snapshots": 2, "handle folders": 2, "shard embedding folders": 2,
        "embedding cache spaces": 2, "corpus datasets": 0, "checkpoint folders": 3}
    assert base.get(["t"])["t"].shape == (4,)  # the base model's entries, used by every run, stay readable


def test_without_runs_in_progress_nothing_new_is_spared_and_a_second_pass_removes_nothing(tmp_path):
    root, handles = tmp_path / "artifacts", tmp_path / "handles"
    for i in range(4):
        _write_run(root, handles, f"run-{i}", i * 100, f"fp-{i}")
    first = apply_retention_plan(root, keep=1, protected=set(), handles_dir=handles)
    assert _left(root / "runs") == {"run-3"} and _left(handles) == {"run-3"}
    assert _left(root / "embeddings") == {"fp-3"}
    assert first.kept_fingerprints == {"fp-3", "base"}
    second = apply_retention_plan(root, keep=1, protected=set(), handles_dir=handles)
    assert second.count == 0 and second.summary() == "nothing"


def test_the_logged_copy_of_a_pruned_model_goes_and_a_kept_ones_stays(tmp_path):
    from embed_pipeline.lib.retention import prune_logged_models
    from embed_pipeline.lib.tracking import Tracker

    root = tmp_path / "artifacts"
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (root / "mlruns").as_uri())
    versions = {}
    for run in ("old", "kept"):
        model = root / "assets" / "embedding_model" / run / "model"
        model.mkdir(parents=True)
        (model / "model.safetensors").write_bytes(b"weights")
        with tracker.open_run(run_name=run, tags={}) as run_id:
            tracker.log_artifacts(run_id, model, "model")
            versions[run] = tracker.register_model("m", run_id, "model", tags={"model_path": str(model)})
    copies = {run: Path(urlparse(tracker.client.get_model_version("m", v).source).path) for run, v in versions.items()}
    assert all((copy / "model.safetensors").is_file() for copy in copies.values())
    shutil.rmtree(root / "assets" / "embedding_model" / "old")  # retention pruned the old run's folders

    assert prune_logged_models(tracker.client, "m", root) == [copies["old"]]
    assert not copies["old"].exists() and (copies["kept"] / "model.safetensors").is_file()
    assert tracker.client.get_model_version("m", versions["old"]).tags["model_artifacts"] == "pruned by retention"
    assert prune_logged_models(tracker.client, "m", root) == []  # already gone: nothing to do


def test_corpus_datasets_stay_while_an_index_or_a_kept_run_names_them(tmp_path):
    root, handles = tmp_path / "artifacts", tmp_path / "handles"
    datasets = root / "corpus"
    for i, name in enumerate(("oldest", "indexed", "handled", "newest")):
        (datasets / name / "passages").mkdir(parents=True)
        (datasets / name / "corpus.json").write_text("{}")
        _age(datasets / name, OLD + i * 100)
    dense = root / "assets" / "served_index" / "run-1" / "dense"
    dense.mkdir(parents=True)
    (dense / "index.json").write_text(json.dumps({"corpus_dataset": str(datasets / "indexed")}))
    (handles / "run-1").mkdir(parents=True)
    (handles / "run-1" / "corpus.json").write_text(json.dumps(
        {"type": "CorpusHandle", "fields": {"path": str(datasets / "handled"), "quarantine_path": "q"}}))
    result = apply_retention_plan(root, keep=1, protected=set(), handles_dir=handles)
    assert _left(datasets) == {"indexed", "handled", "newest"}
    assert [p.name for p in result.removed["corpus datasets"]] == ["oldest"]
