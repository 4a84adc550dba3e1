"""Corpus change detection: re-embed only the shards whose passages changed, everything for a new champion.

The cursor holds the corpus file's size and mtime, one content hash per shard and the identity of
the served model. A tick whose file stamp and served model are unchanged stops there (one `stat`,
no read); otherwise it reads the corpus, hashes each shard (lib/corpus.py), adds partitions for new shard keys,
removes keys of an old shard count, and requests:
- one run over every shard when there is no cursor yet or the served model changed (a new
  champion must re-embed everything; `BackfillPolicy.single_run` makes it one run, one model load);
- otherwise one run per changed shard, keyed by the shard's hash so a content is embedded once.
After each successful re-embedding run, `served_index_sensor` rebuilds the served index.
"""

import json

import dagster as dg

from embed_pipeline.defs.jobs import reembed_job, served_index_job
from embed_pipeline.defs.partitions import corpus_shards
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.config import PipelineConfig
from embed_pipeline.lib.corpus import dataset_for, shard_keys, source_stamp
from embed_pipeline.lib.promotion import read_served
from embed_pipeline.lib.text import text_hash

REASON_TAG = "embed_pipeline/reembed_reason"


def served_identity(config: PipelineConfig) -> str:
    served = read_served(config.artifacts_dir)
    return f"{served['model_name']} v{served['model_version']} ({served['model_dir']})" if served else "base model"


def corpus_change_result(config: PipelineConfig, cursor: str | None, existing: list[str]) -> dg.SensorResult:
    """The sensor's decision for the corpus and served model as they are now, given the last cursor."""
    previous = json.loads(cursor) if cursor else {}
    stamp = source_stamp(config.corpus)
    served = served_identity(config)
    expected_keys = sorted(shard_keys(config.index.shards))
    if previous and previous.get("stamp") == stamp and previous.get("served") == served and sorted(existing) == expected_keys:
        return dg.SensorResult(skip_reason=f"corpus file unchanged ({stamp}); served model unchanged", cursor=cursor)
    hashes = dataset_for(config).shard_hashes
    keys = sorted(hashes)
    new_cursor = json.dumps({"stamp": stamp, "shards": hashes, "served": served}, sort_keys=True)
    partitions = []
    added = [k for k in keys if k not in existing]
    stale = [k for k in existing if k not in hashes]
    if added:
        partitions.append(corpus_shards.build_add_request(added))
    if stale:
        partitions.append(corpus_shards.build_delete_request(stale))
    if not previous or previous.get("served") != served:
        reason = "first look at the corpus" if not previous else f"new served model: {served}"
        run_key = f"all-{text_hash(new_cursor)}"
        requests = [dg.RunRequest(run_key=run_key, tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
            REASON_TAG: reason,
        })]
    else:
        changed = [k for k in keys if previous.get("shards", {}).get(k) != hashes[k]]
        requests = [dg.RunRequest(run_key=f"{k}-{hashes[k]}-{text_hash(served)}", partition_key=k,
                                  tags={REASON_TAG: "shard content changed"}) for k in changed]
    if not requests and not partitions:
        return dg.SensorResult(skip_reason=f"no shard of {len(keys)} changed; served model unchanged", cursor=new_cursor)
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions, cursor=new_cursor)


@dg.sensor(job=reembed_job, name="corpus_change_sensor", default_status=dg.DefaultSensorStatus.RUNNING,
           minimum_interval_seconds=15)
def corpus_change_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    """Re-embeds changed corpus shards with the served model; all shards when a new champion is served."""
    return corpus_change_result(pipeline.config, context.cursor, context.instance.get_dynamic_partitions(corpus_shards.name))


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[reembed_job], request_job=served_index_job,
                      name="served_index_sensor", default_status=dg.DefaultSensorStatus.RUNNING)
def served_index_sensor(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
    """After a successful re-embedding run, rebuild the served index from the shard files (when a champion is served)."""
    if read_served(pipeline.config.artifacts_dir) is None:
        return dg.SkipReason("no champion is served yet: nothing to re-index")
    return dg.RunRequest(run_key=f"index-after-{context.dagster_run.run_id}")
