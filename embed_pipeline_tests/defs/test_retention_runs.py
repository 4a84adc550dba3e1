"""Retention's view of the Dagster instance: the run holding an asset's latest handle is pinned."""

import dagster as dg

from embed_pipeline.defs.handles import HandleIOManager, handles_dir
from embed_pipeline.defs.retention import pinned_runs
from embed_pipeline.lib.artifacts import CorpusHandle


@dg.asset
def corpus() -> CorpusHandle:
    return CorpusHandle("corpus.parquet", 1, "quarantine.parquet", "v1")


def test_the_run_with_the_latest_materialisation_of_each_asset_is_pinned(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        runs = [dg.materialize([corpus], instance=instance, resources={"io_manager": HandleIOManager()}).run_id
                for _ in range(2)]
        assert {p.name for p in handles_dir(instance).iterdir()} == set(runs)
        assert pinned_runs(instance) == {runs[1]}
