"""The IO manager that passes handles (lib/artifacts.py) between assets, run by run.

Dagster's default filesystem IO manager stores an asset's value under its key alone, so two runs
at once read each other's values. Here a handle is stored under the run that produced it, and a
downstream step loads the one its upstream step wrote in *its* run (the parent run on a
re-execution); an input from outside the run (an asset not selected) loads the handle of that
asset's latest materialisation. The handle is also shown in the materialisation's metadata.
"""

from pathlib import Path

import dagster as dg

from embed_pipeline.lib.artifacts import handle_from_json, handle_to_json
from embed_pipeline.lib.io import read_json, write_json


def handles_dir(instance: dg.DagsterInstance) -> Path:
    """Where the handles live: one folder per run (retention deletes those of pruned runs)."""
    return Path(instance.storage_directory()) / "handles"


def handle_asset_key(path: Path) -> dg.AssetKey:
    """The asset a handle file belongs to (the inverse of its file name)."""
    return dg.AssetKey(path.stem.split("__"))


def _handle_file(instance: dg.DagsterInstance, run_id: str, asset_key: dg.AssetKey) -> Path:
    return handles_dir(instance) / run_id / f"{'__'.join(asset_key.path)}.json"


class HandleIOManager(dg.ConfigurableIOManager):
    """Stores each asset's handle (a small typed record naming its run-scoped files) per run."""

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        data = handle_to_json(obj)
        write_json(data, _handle_file(context.step_context.instance, context.run_id, context.asset_key))
        context.add_output_metadata({"handle": dg.MetadataValue.json(data)})

    def load_input(self, context: dg.InputContext):
        instance = context.instance
        key = context.asset_key
        try:
            run_id = context.upstream_output.run_id if context.upstream_output is not None else None
        except dg.DagsterInvariantViolationError:
            run_id = None
        if run_id is None or not _handle_file(instance, run_id, key).exists():
            event = instance.get_latest_materialization_event(key)
            if event is None:
                raise dg.Failure(f"{key.to_user_string()} has never been materialised: materialise it first")
            run_id = event.run_id
        path = _handle_file(instance, run_id, key)
        if not path.exists():
            raise dg.Failure(f"{key.to_user_string()}: run {run_id} left no handle at {path}")
        return handle_from_json(read_json(path))
