"""Shards, the corpus change sensor and per-shard re-embedding on the fixture project."""

import json

import dagster as dg
import pytest

from embed_pipeline.defs.assets.serving import corpus_embeddings, served_index
from embed_pipeline.defs.corpus_sensor import corpus_change_sensor
from embed_pipeline.defs.partitions import corpus_shards
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.corpus import shard_key, shard_keys, shard_of
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.promotion import promote

SHARDS = 4
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture()
def sharded(tmp_path, tiny_model_path):
    from embed_pipeline_tests.fixture_data import write_project

    return write_project(tmp_path / "project", tiny_model_path, index={"shards": SHARDS})


def edit_passage(config_path, passage_id, text=None):
    """Replace (text given) or delete (text None) one passage in the fixture corpus file."""
    corpus = config_path.parent / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    rows = [dict(r, text=text) if r["_id"] == passage_id else r for r in rows if text is not None or r["_id"] != passage_id]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tick(instance, config_path, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"pipeline": PipelineResource(config_path=str(config_path))})
    result = corpus_change_sensor(context)
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_sensor_requests_only_changed_shards_and_everything_for_a_new_champion(sharded):
    instance = dg.DagsterInstance.ephemeral()
    first = tick(instance, sharded)
    assert sorted(instance.get_dynamic_partitions(corpus_shards.name)) == shard_keys(SHARDS)
    (initial,) = first.run_requests
    assert (initial.tags[RANGE_START], initial.tags[RANGE_END]) == (shard_key(0, SHARDS), shard_key(SHARDS - 1, SHARDS))

    unchanged = tick(instance, sharded, first.cursor)
    assert not unchanged.run_requests and "corpus file unchanged" in unchanged.skip_reason.skip_message  # a stat, no read
    corpus_file = sharded.parent / "corpus.jsonl"
    corpus_file.write_text(corpus_file.read_text())  # touched, same content: hashed, nothing to re-embed
    touched = tick(instance, sharded, unchanged.cursor)
    assert not touched.run_requests and "no shard of 4 changed" in touched.skip_reason.skip_message
    unchanged = touched

    edit_passage(sharded, "brake-rub", "Loosen both caliper bolts, pull the lever, and retighten them to centre the caliper.")
    changed = tick(instance, sharded, unchanged.cursor)
    assert [r.partition_key for r in changed.run_requests] == [shard_key(shard_of("brake-rub", SHARDS), SHARDS)]

    edit_passage(sharded, "pedal-threads", None)
    deleted = tick(instance, sharded, changed.cursor)
    assert [r.partition_key for r in deleted.run_requests] == [shard_key(shard_of("pedal-threads", SHARDS), SHARDS)]

    config = load_config(sharded)
    promote(config.artifacts_dir, {"model_name": "m", "model_version": "2", "model_dir": config.base_model,
                                   "index_path": "unused"}, "test", "a new champion")
    promoted = tick(instance, sharded, deleted.cursor)
    (everything,) = promoted.run_requests
    assert everything.tags[RANGE_END] == shard_key(SHARDS - 1, SHARDS) and everything.partition_key is None


def test_reembedding_touches_only_changed_passages_and_deletions_leave_the_index(sharded):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(corpus_shards.name, shard_keys(SHARDS))
    resources = {"pipeline": PipelineResource(config_path=str(sharded))}

    def materialize(assets, **kwargs):
        result = dg.materialize(assets, instance=instance, resources=resources, **kwargs)
        assert result.success
        return result.asset_materializations_for_node(assets[-1].key.path[-1])

    everything = {RANGE_START: shard_key(0, SHARDS), RANGE_END: shard_key(SHARDS - 1, SHARDS)}
    events = materialize([corpus_embeddings], tags=everything)
    assert sorted(e.partition for e in events) == shard_keys(SHARDS), "one run materialises every shard"
    assert events[0].metadata["passages_encoded"].value == 20 and events[0].metadata["shards"].value == SHARDS

    edit_passage(sharded, "brake-rub", "Loosen both caliper bolts, pull the lever, and retighten them to centre the caliper.")
    edit_passage(sharded, "pedal-threads", None)
    shard = shard_key(shard_of("brake-rub", SHARDS), SHARDS)
    (one,) = materialize([corpus_embeddings], partition_key=shard)
    in_shard = one.metadata["dagster/row_count"].value
    assert one.metadata["passages_encoded"].value == 1
    assert one.metadata["passages_from_cache"].value == in_shard - 1

    materialize([corpus_embeddings], partition_key=shard_key(shard_of("pedal-threads", SHARDS), SHARDS))
    (index_event,) = materialize([served_index])
    index = load_index(index_event.metadata["index_path"].value)
    assert index.index.ntotal == 19 and "pedal-threads" not in set(index.passage_ids) and "brake-rub" in set(index.passage_ids)
