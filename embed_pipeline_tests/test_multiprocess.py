"""The same definitions under Dagster's multiprocess executor: each step in its own process."""

import dagster as dg
import pandas as pd
import pytest

from embed_pipeline.lib.config import load_config
from embed_pipeline_tests.fixture_data import PASSAGES

SOURCE_ASSETS = ["corpus", "synthetic_pairs", "search_log_pairs"]


def multiprocess_sources_job() -> dg.JobDefinition:
    """Module-level so `dg.reconstructable` can rebuild it in each step's process."""
    from embed_pipeline.definitions import build_defs

    job = dg.define_asset_job("sources_multiprocess", selection=SOURCE_ASSETS,
                              executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}))
    # The Definitions edge: each step's process reads the config path from the environment, as `dagster dev` does.
    return dg.Definitions.merge(build_defs(dg.EnvVar("EMBED_PIPELINE_CONFIG")), dg.Definitions(jobs=[job])).resolve_job_def(
        "sources_multiprocess")


@pytest.mark.slow
def test_source_assets_materialise_with_the_multiprocess_executor(project, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBED_PIPELINE_CONFIG", str(project))  # step processes inherit it (set for this test only)
    with dg.instance_for_test() as instance:
        with dg.execute_job(dg.reconstructable(multiprocess_sources_job), instance=instance) as result:
            assert result.success
            starts = [e for e in result.all_events if e.event_type_value == "STEP_START" and e.step_key in SOURCE_ASSETS]
            assert sorted(e.step_key for e in starts) == sorted(SOURCE_ASSETS)
            assert len({e.pid for e in starts}) == len(SOURCE_ASSETS), "every step ran in a process of its own"
            corpus = instance.get_latest_materialization_event(dg.AssetKey("corpus")).asset_materialization
            assert corpus.metadata["dagster/row_count"].value == 20
            handle = instance.get_latest_materialization_event(dg.AssetKey("synthetic_pairs")).asset_materialization
            path = handle.metadata["handle"].value["fields"]["path"]
            assert path.startswith(str(load_config(project).artifacts_dir / "assets" / "synthetic_pairs" / result.run_id))
            synthetic = pd.read_parquet(path)
            assert len(synthetic) and set(synthetic["passage_id"]) <= set(PASSAGES)
