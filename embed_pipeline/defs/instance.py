"""One pipeline among several in a code location: `build_definitions(config_path)` made its own.

Dagster Components load every `defs.yaml` instance into one code location, where asset keys, job,
sensor and schedule names, resource keys and partitions-definition names are global. For one
instance, `instance_definitions` takes what `build_definitions(config_path)` returns and, without
touching an asset body:
- prefixes every asset key with `key_prefix` (`support/eval_report`), and with it the keys that
  assets, checks, job selections and the promotion sensor name;
- suffixes the jobs, the schedule, the sensors and the `corpus_shards` dynamic partitions with
  `name_suffix` (`training_job_support`): one instance's corpus sensor adding or deleting shard
  keys leaves the other's partitions alone;
- binds the instance's resources under suffixed keys (`pipeline_support`, `mlflow_support`, ...):
  an asset's parameter `pipeline` reads the key `pipeline_support`. Two instances cannot share the
  key `pipeline`: Dagster's implicit asset job holds every asset of the location, and there a key
  names one resource. The stateless handle IO manager is one object shared by every instance;
- scopes the sensors to the instance's own jobs (the run-failure sensor too, which otherwise
  watches the whole location);
- puts the GPU-heavy steps in `pool` (default `gpu`, shared on purpose: two instances on one
  machine share its GPU, so their training steps take turns; give each its own pool when each has
  its own GPU).

Artifacts stay apart through the configs: each instance's YAML names its own `artifacts_dir`
(and with it the MLflow store, the served pointer and the promotion history).
"""

import inspect
import re
import typing
from collections.abc import Mapping

import dagster as dg

# Dagster internals (as `with_replaced_properties` and `load_assets_from_modules` use them): an op
# is rebuilt with a compute function whose resource parameters carry the instance's keys. Dagster
# is pinned (pyproject's postgres extra); embed_pipeline_tests/defs/test_instance.py runs the result.
from dagster._core.definitions.decorators.op_decorator import DecoratedOpFunction

from embed_pipeline.definitions import build_definitions
from embed_pipeline.defs.corpus_sensor import corpus_change_result, corpus_change_sensor, served_index_sensor
from embed_pipeline.defs.handles import HandleIOManager
from embed_pipeline.defs.promotion_sensor import promotion_decision, promotion_sensor, reconcile_served
from embed_pipeline.defs.recovery import orphaned_mlflow_runs_sensor
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.defs.retention import apply_retention, retention_sensor
from embed_pipeline.defs.schedules import NIGHTLY_CRON, nightly_schedule
from embed_pipeline.lib.promotion import read_served
from embed_pipeline.lib.tracking import close_orphaned_runs

# One object for every instance: Definitions.merge accepts a key shared by two instances only for the same object.
SHARED_IO_MANAGER = HandleIOManager()
KEY_PREFIX = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
NAME_SUFFIX = re.compile(r"[A-Za-z0-9_]+")


def name_suffix_for(key_prefix: str) -> str:
    """`support` -> `_support`, `legal/contracts` -> `_legal_contracts`: a suffix valid in Dagster names."""
    return "_" + key_prefix.replace("/", "_")


def _renamed_params(fn, names: Mapping[str, str]):
    """`fn` with its resource parameters renamed (`pipeline` -> `pipeline_support`): Dagster binds a
    resource parameter to the key of its name, so the renamed signature reads the instance's keys."""
    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)
    back = {new: old for old, new in names.items()}

    def call(*args, **kwargs):
        return fn(*args, **{back.get(k, k): v for k, v in kwargs.items()})

    call.__signature__ = signature.replace(parameters=[
        p.replace(name=names.get(p.name, p.name), annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()])
    call.__annotations__ = {names.get(k, k): v for k, v in hints.items()}
    call.__name__, call.__qualname__, call.__doc__, call.__module__ = fn.__name__, fn.__qualname__, fn.__doc__, fn.__module__
    return call


def _rebound_op(op: dg.OpDefinition, name: str, keys: Mapping[str, str], pool: str) -> dg.OpDefinition:
    """The op renamed, with its resource keys renamed by `keys` and its pool (if any) set to `pool`."""
    return dg.OpDefinition.dagster_internal_init(
        name=name,
        ins={i.name: dg.In.from_definition(i) for i in op.input_defs},
        outs={o.name: dg.Out.from_definition(o) for o in op.output_defs},
        compute_fn=DecoratedOpFunction(_renamed_params(op.compute_fn.decorated_fn, keys)),
        config_schema=op.config_schema,
        description=op.description,
        tags=op.tags,
        required_resource_keys={keys.get(k, k) for k in op.required_resource_keys},
        code_version=None,
        retry_policy=op.retry_policy,
        version=None,
        pool=pool if op.pool else None,
    )


def _rebound(definition, op_prefix: str, keys: Mapping[str, str], replacements: Mapping[dg.AssetKey, dg.AssetKey],
             partitions: Mapping[str, dg.PartitionsDefinition], pool: str):
    """An assets or checks definition with its keys prefixed, its op renamed (`support__corpus`, as
    `@asset(key_prefix=...)` names it: two instances' ops are two definitions and need two names),
    resources renamed, pool and dynamic partitions replaced."""
    attributes = definition.get_attributes_dict()
    attributes["node_def"] = _rebound_op(definition.node_def, f"{op_prefix}__{definition.node_def.name}", keys, pool)
    if "specs" in attributes:
        attributes["specs"] = [spec.replace_attributes(partitions_def=partitions[spec.partitions_def.name])
                               if isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition) else spec
                               for spec in attributes["specs"]]
    rebuilt = type(definition).dagster_internal_init(**attributes)
    return rebuilt.with_attributes(asset_key_replacements=replacements)


def instance_definitions(config_path: str, key_prefix: str, name_suffix: str | None = None, pool: str = "gpu",
                         cron: str = NIGHTLY_CRON) -> dg.Definitions:
    """`build_definitions(config_path)` as one instance among others in a code location (module docstring).

    `key_prefix`: one or more parts joined by `/` (`support`, `legal/contracts`); `name_suffix`
    (default `_` + the prefix's parts joined by `_`) ends every job, sensor, schedule, partitions
    and resource name. Several instances: `dg.Definitions.merge(instance_definitions(...), ...)`."""
    if not KEY_PREFIX.fullmatch(key_prefix):
        raise ValueError(f"key_prefix {key_prefix!r}: letters, digits and _ in one or more parts joined by / (support, legal/contracts)")
    suffix = name_suffix_for(key_prefix) if name_suffix is None else name_suffix
    if not NAME_SUFFIX.fullmatch(suffix):
        raise ValueError(f"name_suffix {suffix!r}: one or more letters, digits or _ (_support)")
    base = build_definitions(config_path)
    graph = base.resolve_asset_graph()
    prefix = key_prefix.split("/")
    replacements = {key: key.with_prefix(prefix) for key in graph.get_all_asset_keys()}
    keys = {key: f"{key}{suffix}" for key in base.resources if key != "io_manager"}
    resources = {keys[k]: v for k, v in base.resources.items() if k in keys}
    partitions = {p.name: dg.DynamicPartitionsDefinition(name=f"{p.name}{suffix}")
                  for p in (a.partitions_def for a in base.assets) if isinstance(p, dg.DynamicPartitionsDefinition)}
    op_prefix = "__".join(prefix)
    assets = [_rebound(a, op_prefix, keys, replacements, partitions, pool) for a in base.assets]
    checks = [_rebound(c, op_prefix, keys, replacements, partitions, pool) for c in base.asset_checks]

    jobs = {}
    for job in base.jobs:
        selected = [replacements[k] for k in job.selection.resolve(graph)]
        selected_checks = [c.replace_asset_key(replacements[c.asset_key]) for c in job.selection.resolve_checks(graph)]
        jobs[job.name] = dg.define_asset_job(
            f"{job.name}{suffix}", selection=dg.AssetSelection.assets(*selected) | dg.AssetSelection.checks(*selected_checks),
            description=job.description, tags=job.tags, run_tags=job.run_tags, executor_def=job.executor_def,
            config=job.config, hooks=job.hooks, op_retry_policy=job.op_retry_policy)
    schedule = nightly_schedule(cron, job=jobs["training_job"], name=f"nightly_retraining{suffix}")
    sensors = instance_sensors(jobs, suffix, keys, replacements[dg.AssetKey("eval_report")], partitions["corpus_shards"],
                               {a.node_def.name: f"{op_prefix}__{a.node_def.name}" for a in base.assets})
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=list(jobs.values()), schedules=[schedule],
                          sensors=sensors, resources={**resources, "io_manager": SHARED_IO_MANAGER})


def instance_sensors(jobs: Mapping[str, dg.JobDefinition], suffix: str, keys: Mapping[str, str],
                     eval_report: dg.AssetKey, shards: dg.DynamicPartitionsDefinition,
                     op_names: Mapping[str, str]) -> list[dg.SensorDefinition]:
    """The five sensors of `build_definitions` for one instance: the same decisions (each calls the
    function its module sensor calls) on the instance's jobs, asset key, partitions and resource keys."""

    def sensor(decorator):
        return lambda fn: decorator(_renamed_params(fn, keys))

    @sensor(dg.asset_sensor(asset_key=eval_report, job=jobs["promotion_job"], name=f"promotion_sensor{suffix}",
                            default_status=promotion_sensor.default_status, description=promotion_sensor.description,
                            minimum_interval_seconds=promotion_sensor.minimum_interval_seconds))
    def promotion(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry, pipeline: PipelineResource,
                  mlflow: MlflowResource):
        for line in reconcile_served(pipeline.config, mlflow):
            context.log.warning(f"reconciled: {line}")
        decision = promotion_decision(asset_event)
        if isinstance(decision, dg.RunRequest):  # its run config names the op `served_model`: here `<prefix>__served_model`
            ops = {op_names.get(op, op): value for op, value in decision.run_config["ops"].items()}
            decision = dg.RunRequest(run_key=decision.run_key, run_config={**decision.run_config, "ops": ops}, tags=decision.tags)
        return decision

    @sensor(dg.sensor(job=jobs["reembed_job"], name=f"corpus_change_sensor{suffix}", description=corpus_change_sensor.description,
                      default_status=corpus_change_sensor.default_status,
                      minimum_interval_seconds=corpus_change_sensor.minimum_interval_seconds))
    def corpus_change(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        result = corpus_change_result(pipeline.config, context.cursor, context.instance.get_dynamic_partitions(shards.name))
        return _with_partitions(result, shards)

    @sensor(dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[jobs["reembed_job"]],
                                 request_job=jobs["served_index_job"], name=f"served_index_sensor{suffix}",
                                 description=served_index_sensor.description, default_status=served_index_sensor.default_status))
    def served_index(context: dg.RunStatusSensorContext, pipeline: PipelineResource):
        if read_served(pipeline.config.artifacts_dir) is None:
            return dg.SkipReason("no champion is served yet: nothing to re-index")
        return dg.RunRequest(run_key=f"index-after-{context.dagster_run.run_id}")

    @sensor(dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[jobs["training_job"]],
                                 name=f"retention_sensor{suffix}", description=retention_sensor.description,
                                 default_status=retention_sensor.default_status))
    def retention(context: dg.RunStatusSensorContext, pipeline: PipelineResource, mlflow: MlflowResource):
        return dg.SkipReason(f"retention: removed {apply_retention(pipeline.config, mlflow, context.instance).summary()}")

    @sensor(dg.run_failure_sensor(name=f"orphaned_mlflow_runs_sensor{suffix}", monitored_jobs=list(jobs.values()),
                                  description=orphaned_mlflow_runs_sensor.description,
                                  default_status=orphaned_mlflow_runs_sensor.default_status))
    def orphaned(context: dg.RunFailureSensorContext, pipeline: PipelineResource, mlflow: MlflowResource):
        context.instance.event_log_storage.free_concurrency_slots_for_run(context.dagster_run.run_id)
        killed = close_orphaned_runs(mlflow.tracker(pipeline.config), context.dagster_run.run_id)
        if killed:
            context.log.info(f"ended {len(killed)} MLflow run(s) of failed run {context.dagster_run.run_id} as KILLED: {killed}")

    return [promotion, corpus_change, served_index, retention, orphaned]


def _with_partitions(result: dg.SensorResult, shards: dg.DynamicPartitionsDefinition) -> dg.SensorResult:
    """The corpus sensor's decision with its partition requests addressed to this instance's shards."""
    requests = [shards.build_add_request(list(r.partition_keys)) if isinstance(r, dg.AddDynamicPartitionsRequest)
                else shards.build_delete_request(list(r.partition_keys))
                for r in result.dynamic_partitions_requests or []]
    return dg.SensorResult(run_requests=result.run_requests, skip_reason=result.skip_reason, cursor=result.cursor,
                           dynamic_partitions_requests=requests or None)
