"""The CLI's session and output helpers, shared by `cli.py` and `demo.py`.

`Session` is one command's view of the world: the config, the Dagster instance in $DAGSTER_HOME
and the definitions bound to that config file. `say` is the one progress line format (stderr;
stdout is kept for results). `root_cause` and `output` read a finished in-process run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

from embed_pipeline.lib.config import ConfigError, PipelineConfig, load_config
from embed_pipeline.starter import default_config, seed_instance

POOL = "gpu"


def say(message: str) -> None:
    print(f"[embed-pipeline] {message}", file=sys.stderr, flush=True)


def dagster_home(config: PipelineConfig) -> Path:
    """$DAGSTER_HOME, or `<artifacts_dir>/dagster_home`; created when missing and seeded with the
    bundled dagster.yaml when it has none (Dagster itself refuses a DAGSTER_HOME that does not exist)."""
    chosen = os.environ.get("DAGSTER_HOME")
    home = Path(chosen) if chosen else config.artifacts_dir / "dagster_home"
    ours = not chosen or not home.exists()  # an existing instance of the user's is left as it is
    home.mkdir(parents=True, exist_ok=True)
    if ours:
        seed_instance(home)
    elif not (home / "dagster.yaml").exists():
        say(f"DAGSTER_HOME {home} has no dagster.yaml: Dagster's defaults apply (SQLite in that folder, no pool limit)")
    return home


class Session:
    """One CLI invocation: the config, the Dagster instance and the definitions bound to the config file."""

    def __init__(self, config_path: str | None):
        self.config_path = str(Path(config_path or default_config()).expanduser().resolve())
        self.config = load_config(self.config_path)
        os.environ["DAGSTER_HOME"] = str(dagster_home(self.config))  # Dagster's own instance lookup
        # What libraries would write into HOME goes under artifacts_dir (a user's own setting wins):
        # matplotlib's font cache; MLflow's telemetry file, off as dagster.yaml turns Dagster's off.
        os.environ.setdefault("MPLCONFIGDIR", str(self.config.artifacts_dir / "cache" / "matplotlib"))
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        say(f"config {self.config_path}; DAGSTER_HOME={os.environ['DAGSTER_HOME']}; MLflow {self.config.tracking_uri}")
        self.check_stores()

    def check_stores(self) -> None:
        """Open the Dagster instance's storage and the MLflow store now: a database that cannot be
        reached (wrong URL, host, port or password) is one config error at start, before any work."""
        from embed_pipeline.lib.tracking import RegistryError

        home = os.environ["DAGSTER_HOME"]
        try:
            self.instance.get_runs(limit=1)
        except Exception as exc:  # noqa: BLE001 - psycopg, SQLAlchemy, Dagster's config and retry errors
            raise ConfigError(f"the Dagster instance in {home} (dagster.yaml) cannot open its storage: {_innermost(exc)}") from exc
        uri = self.config.tracking_uri
        if uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
            # One connection attempt: MLflow itself retries a database for about 100 s before it says why.
            import sqlalchemy

            shown = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
            engine = sqlalchemy.create_engine(uri)
            try:
                with engine.connect():
                    pass
            except Exception as exc:  # noqa: BLE001 - the drivers' connection errors have no common base
                raise ConfigError(f"cannot reach the MLflow store at {shown}: {_innermost(exc)}") from exc
            finally:
                engine.dispose()
        try:
            self.tracker()
        except RegistryError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.get()

    @property
    def defs(self):
        from embed_pipeline.definitions import build_defs

        return build_defs(self.config_path)

    def tracker(self):
        from embed_pipeline.defs.resources import MlflowResource

        return MlflowResource().tracker(self.config)

    def recover(self) -> None:
        """Fail runs of this host whose process is gone, free their pool slots, end their MLflow runs."""
        from embed_pipeline.defs.recovery import recover_dead_runs
        from embed_pipeline.lib.tracking import close_orphaned_runs

        tracker = self.tracker()
        for dead in recover_dead_runs(self.instance, lambda run_id: close_orphaned_runs(tracker, run_id)):
            say(f"recovered dead run {dead.run_id} ({dead.job_name}, process {dead.pid} is gone): marked failed, "
                f"pool slots freed, {len(dead.mlflow_runs_killed)} MLflow run(s) ended as KILLED; "
                "training resumes from its last checkpoint")

    def reconcile(self) -> None:
        from embed_pipeline.defs.resources import MlflowResource
        from embed_pipeline.defs.promotion_sensor import reconcile_served

        for line in reconcile_served(self.config, MlflowResource()):
            say(f"reconciled: {line}")

    def execute(self, job_name: str, verbose: bool = False, **kwargs):
        """Run a job in this process (tagged with our pid, so a later CLI can recover it if we die)."""
        from embed_pipeline.defs.recovery import process_tags

        job = self.defs.resolve_job_def(job_name)
        log_level = "DEBUG" if verbose else "INFO"
        run_config = {**kwargs.pop("run_config", {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
        # Libraries print progress to stdout (the trainer's loss lines); keep stdout for results.
        with contextlib.redirect_stdout(sys.stderr), _pool_watch(self.instance):
            return job.execute_in_process(instance=self.instance, raise_on_error=False, run_config=run_config,
                                          tags={**kwargs.pop("tags", {}), **process_tags()}, **kwargs)


def _innermost(exc: BaseException) -> str:
    """The first line of the deepest cause (a driver's "connection refused", not a wrapper's "too many retries")."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return f"{type(exc).__name__}: {lines[0]}"


@contextlib.contextmanager
def _pool_watch(instance, every: float = 20.0):
    """While a run executes, say at INFO level when one of its steps waits for the `gpu` pool, and who holds it."""
    import dagster as dg

    from embed_pipeline.defs.recovery import PID_TAG, pool_holders

    stop = threading.Event()

    def watch():
        while not stop.wait(every):
            try:
                mine = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                              tags={PID_TAG: str(os.getpid())}), limit=5)
                for record in mine:
                    waiting, holders = pool_holders(instance, POOL, record.dagster_run.run_id)
                    if waiting:
                        say(f"step(s) {', '.join(waiting)} waiting for pool '{POOL}' (limit reached), held by "
                            f"{'; '.join(holders) or 'a slot not yet freed'}; a dead holder is recovered at the next start")
            except Exception:  # noqa: BLE001 - a watcher must never break the run it watches
                continue

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def check_evaluations(result):
    """(blocking checks that failed, warning checks that failed) of a finished run."""
    import dagster as dg

    evaluations = result.get_asset_check_evaluations()
    failed = [e for e in evaluations if not e.passed and e.severity != dg.AssetCheckSeverity.WARN]
    warned = [e for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.WARN]
    return failed, warned


def output(result, node: str):
    """The value a node of a finished in-process run returned, or None when it has none."""
    try:
        return result.output_for_node(node)
    except Exception:  # noqa: BLE001 - Dagster raises several types for "no such output"
        return None


def root_cause(error) -> str:
    """The innermost cause of a Dagster step error, in one line (Dagster wraps the user's exception)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    text = " ".join((error.message or "").split())
    return text.removeprefix("dagster._core.definitions.events.Failure: ")
