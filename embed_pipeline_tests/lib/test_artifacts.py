"""Run-scoped artifact folders, typed handles, and retention that never deletes what serving needs."""

import os

import pytest

from embed_pipeline.lib.artifacts import (
    CorpusHandle,
    PairsHandle,
    handle_from_json,
    handle_to_json,
    prune,
    run_folder,
)


def test_each_run_gets_its_own_folder_and_handles_round_trip(tmp_path):
    a, b = run_folder(tmp_path, "training_pairs", "run-a"), run_folder(tmp_path, "training_pairs", "run-b")
    assert a != b and a.is_dir() and b.is_dir()
    handle = PairsHandle(str(a / "pairs.parquet"), 3, version="v1", files={"leaks": str(a / "leaks.parquet")})
    assert handle_from_json(handle_to_json(handle)) == handle
    with pytest.raises(ValueError, match="unknown handle type"):
        handle_from_json({"type": "Pickle", "fields": {}})
    with pytest.raises(TypeError):
        CorpusHandle("p", 1, "q")  # a handle names exactly its fields: a missing one is an error


def test_retention_keeps_the_newest_and_everything_serving_or_running_needs(tmp_path):
    runs = [f"run-{i}" for i in range(6)]
    for age, run in enumerate(reversed(runs)):  # run-5 newest
        for asset in ("embedding_model", "corpus_index"):
            folder = run_folder(tmp_path, asset, run)
            (folder / "file").write_text(run)
            os.utime(folder, (1_000_000 - age * 100, 1_000_000 - age * 100))
    served_model = tmp_path / "assets" / "embedding_model" / "run-0" / "model"  # the oldest one serves
    rollback_index = tmp_path / "assets" / "corpus_index" / "run-1"
    removed = prune(tmp_path, keep=2, protected={served_model, rollback_index}, busy_runs={"run-2"})
    left = {(p.parent.name, p.name) for p in (tmp_path / "assets").glob("*/*")}
    assert ("embedding_model", "run-0") in left and ("corpus_index", "run-1") in left  # protected
    assert ("embedding_model", "run-2") in left and ("corpus_index", "run-2") in left  # still running
    assert {("embedding_model", "run-5"), ("embedding_model", "run-4")} <= left  # the newest two
    assert ("embedding_model", "run-3") not in left and ("corpus_index", "run-0") not in left
    assert len(removed) == 12 - len(left)
