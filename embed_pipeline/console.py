"""The CLI's session and output helpers, shared by `cli.py` and `demo.py`.

`Session` is one command's view of the world: the config, the Dagster instance in $DAGSTER_HOME
and the definitions bound to that config file. `say` is the one progress line format (stderr;
stdout is kept for results). `root_cause` and `output` read a finished in-process run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
import warnings
from pathlib import Path

from embed_pipeline.lib.config import ConfigError, PipelineConfig, load_config
from embed_pipeline.starter import default_config, seed_instance



def say(message: str) -> None:
    print(f"[embed-pipeline] {message}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Keep library chatter out of the default output: progress bars (model loading, encoding, in
    this process and the ones it starts) and Dagster's beta-parameter warning. Our own progress
    lines (training steps, encodes with an ETA) say the same things once; `--verbose` skips this.

    The libraries read the environment switches at import, and child processes (training ranks,
    encoding workers) inherit them; a library this process imported already is switched directly.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers' bars
    os.environ.setdefault("TQDM_DISABLE", "1")  # any other tqdm bar left on by default
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*is currently in beta")


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
        self._tracker = None
        check_writable(self.config.artifacts_dir)
        # Two commands started together on a new artifacts folder: the second waits here while the
        # first seeds DAGSTER_HOME and creates the stores' tables (else: "table runs already exists").
        with setup_lock(self.config.artifacts_dir):
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
            missing = _missing_postgres_driver(exc)  # SQLAlchemy picked a PostgreSQL driver that is not installed
            if missing:
                raise ConfigError(postgres_driver_problem(home, missing, installed=False)) from exc
            raise ConfigError(f"the Dagster instance in {home} (dagster.yaml) cannot open its storage: {_innermost(exc)}") from exc
        check_postgres_driver(self.instance, home)
        uri = self.config.tracking_uri
        if uri.startswith(("http://", "https://")):
            check_tracking_server(uri)
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
        """The MLflow tracker of this config (made once: opening a new store runs its migrations)."""
        from embed_pipeline.defs.resources import MlflowResource

        if self._tracker is None:
            self._tracker = MlflowResource().tracker(self.config)
        return self._tracker

    def recover(self) -> None:
        """Fail runs of this host whose process is gone, free their pool slots, end their MLflow runs."""
        self.tracker()  # opened now: an MLflow store that cannot be reached fails the command before any work
        for dead in self._recover_dead(self.instance):
            say(f"recovered dead run {dead.run_id} ({dead.job_name}, process {dead.pid} is gone): marked failed, "
                f"pool slots freed, {len(dead.mlflow_runs_killed)} MLflow run(s) ended as KILLED; the next run reuses "
                "its registered model if it got that far, else resumes training from its last checkpoint")

    def _recover_dead(self, instance) -> list:
        from embed_pipeline.defs.recovery import recover_dead_runs
        from embed_pipeline.lib.tracking import close_orphaned_runs

        return recover_dead_runs(instance, lambda run_id: close_orphaned_runs(self.tracker(), run_id))

    def reconcile(self, repair: str | None = None) -> None:
        """Served pointer and registry alias brought in line with the history (lib.promotion.reconcile);
        `PromotionError` when damaged records disagree and `repair` does not say whom to trust."""
        from embed_pipeline.defs.resources import MlflowResource
        from embed_pipeline.defs.promotion_sensor import reconcile_served

        for line in reconcile_served(self.config, MlflowResource(), repair):
            say(f"reconciled: {line}")

    def execute(self, job, verbose: bool = False, pool_check_seconds: float = 3.0, **kwargs):
        """Run a job (a name in the definitions, or a job definition) in this process, tagged with our
        pid so a later CLI can recover it if we die.

        While it runs, a watcher recovers dead holders of the `gpu` pool it waits for (checked every
        `pool_check_seconds`); SIGINT, SIGTERM and SIGHUP cancel it and raise `RunInterrupted` once it
        has ended (embed_pipeline/run_watch.py). Interrupt tracebacks are cut unless `verbose`.
        """
        from embed_pipeline.defs.recovery import process_tags
        from embed_pipeline.run_watch import RunWatch, quiet_console_logger

        job = self.defs.resolve_job_def(job) if isinstance(job, str) else job
        if not verbose:
            job = job.with_logger_defs({"console": quiet_console_logger()})
        log_level = "DEBUG" if verbose else "INFO"
        run_config = {**kwargs.pop("run_config", {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
        instance = self.instance  # one instance object: the watcher listens to its events
        run_id = str(uuid.uuid4())  # known before the run starts: the watcher listens for its events
        watch = RunWatch(instance, run_id, job.name, say, lambda: self._recover_dead(instance), pool_check_seconds)
        # Libraries print progress to stdout (the trainer's loss lines); keep stdout for results.
        try:
            with contextlib.redirect_stdout(sys.stderr), _pool_errors_hidden(not verbose), watch.watching():
                result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=run_config,
                                                run_id=run_id, tags={**kwargs.pop("tags", {}), **process_tags()},
                                                **kwargs)
        except KeyboardInterrupt:  # a signal before Dagster took over its handling (run setup)
            if (interrupted := watch.interrupted()) is None:
                raise
            raise interrupted from None
        if (interrupted := watch.interrupted()) is not None:
            raise interrupted
        return result


@contextlib.contextmanager
def _pool_errors_hidden(hidden: bool):
    """While `hidden`, SQLAlchemy's connection-pool loggers say nothing below CRITICAL.

    A stop signal can land while SQLAlchemy closes a pooled connection of the Dagster or MLflow
    store; the pool survives it and only logs the interrupt with a traceback, which would bury the
    run's one-line cause. Real store errors still raise where they happen; `--verbose` shows these too.
    """
    pool_logger = logging.getLogger("sqlalchemy.pool")  # the pools' own loggers inherit its level
    previous = pool_logger.level
    if hidden:
        pool_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pool_logger.setLevel(previous)


TRACKING_PROBE_SECONDS = 5.0


def check_tracking_server(uri: str, timeout: float = TRACKING_PROBE_SECONDS) -> None:
    """One request to an MLflow tracking server, bounded by `timeout` seconds (connect and answer).

    MLflow's own client retries a server that does not answer for minutes before it says why; a
    server that is down, a wrong port or host is found here in seconds, as a config error naming
    the URI. Any HTTP answer (even 404 or 401: credentials are the client's business) means a
    server listens; no answer, a refused connection or a name that does not resolve does not.
    """
    import urllib.error
    import urllib.request

    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=embed-pipeline"
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot reach the MLflow tracking server at {uri} within {timeout:.0f} s: "
                          f"{' '.join(str(reason).split()) or type(exc).__name__} (is `mlflow server` running there?)") from None


def check_writable(artifacts_dir: Path) -> None:
    """`artifacts_dir` exists (created if missing) and a file can be written in it; else a
    `StorageError` in one line (read-only, under a regular file, no permission, disk full)."""
    artifacts_dir = Path(artifacts_dir)
    probe = artifacts_dir / f".write-probe-{os.getpid()}"
    try:
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise StorageError(storage_problem(exc, f"artifacts_dir {artifacts_dir}")) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class StorageError(OSError):
    """A folder the pipeline writes to cannot be written (read-only, not a folder, full): exit 2."""


def storage_problem(exc: BaseException, where: str) -> str:
    """One line for an OS error while writing `where`: the cause in words a user acts on."""
    import errno

    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code == errno.ENOSPC or "no space left" in text or "disk is full" in text or "database or disk is full" in text:
        return f"{where}: no space left on device"
    if code == errno.EROFS or "read-only file system" in text:
        return f"{where}: read-only file system"
    if code in (errno.ENOTDIR, errno.EEXIST) or isinstance(exc, (NotADirectoryError, FileExistsError)):
        return f"{where}: a part of that path is a regular file, not a folder ({getattr(exc, 'filename', '') or exc})"
    if code in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied ({getattr(exc, 'filename', '') or exc})"
    return f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"


def os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError (or SQLite "disk is full") in `exc`'s chain of causes, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) or "disk is full" in str(exc).lower():
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def setup_lock(artifacts_dir: Path):
    """An exclusive lock on `<artifacts_dir>/.setup.lock` while a command sets up its stores."""
    from embed_pipeline.lib.io import file_lock

    return file_lock(Path(artifacts_dir) / ".setup.lock")


def check_environment(config: PipelineConfig) -> None:
    """The environment variables the config names are set (read here, at the CLI's edge): an LLM key
    that is missing would otherwise fail the synthetic step after the sources are read."""
    llm = config.synthetic.llm
    if config.synthetic.generator == "llm" and llm.api_key_env and llm.api_key_env not in os.environ:
        raise ConfigError(f"synthetic.llm.api_key_env names {llm.api_key_env!r}, which is not set in the environment")
    check_hub_model(config.base_model)


def check_hub_model(name: str, timeout: float = 10.0) -> None:
    """A `base_model` that is a hub id exists: in the local cache when HF_HUB_OFFLINE is set (a
    fast local check), else on the hub (one bounded request). Found at start, naming the model,
    instead of inside `synthetic_pairs` after the sources are read. A hub that cannot be reached
    is not judged here: loading the model says why."""
    if name.startswith("pkg:") or Path(name).expanduser().exists():
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(name, f) for f in ("modules.json", "config.json")]
        if not any(isinstance(found, str) for found in cached):
            raise ConfigError(f"base_model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                              "download it once online, or name a local folder")
        return
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(name, timeout=timeout)
    except GatedRepoError:
        return  # it exists; access is the token's business
    except RepositoryNotFoundError:
        raise ConfigError(f"base_model {name!r}: no such model on the Hugging Face hub (check the id, or log in "
                          "for a private one)") from None
    except Exception:  # noqa: BLE001 - offline, a proxy, a timeout: loading it later says why
        return


def _missing_postgres_driver(exc: BaseException) -> str | None:
    """The PostgreSQL driver module whose import failed somewhere in `exc`'s chain, if one did."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and (seen.name or "").split(".")[0] in ("psycopg", "psycopg2"):
            return seen.name.split(".")[0]
        seen = seen.__cause__ or seen.__context__
    return None


def postgres_driver_problem(home: str, driver: str, installed: bool = True) -> str:
    """The one-line reason and fix when Dagster's PostgreSQL storage would not run on `driver`."""
    import sqlalchemy

    problem = (f"uses PostgreSQL through {driver}, but dagster-postgres needs psycopg2" if installed and driver != "psycopg2"
               else f"needs the PostgreSQL driver {driver}, which is not installed (dagster-postgres needs psycopg2)")
    return (f"the Dagster instance in {home} (dagster.yaml) {problem}; its event log's NOTIFY works only with psycopg2's "
            f"client-side parameters, and SQLAlchemy {sqlalchemy.__version__} maps a plain postgresql:// to its default "
            "driver (psycopg 3 from 2.1 on): pip install 'embed-pipeline[postgres]' (SQLAlchemy<2.1 + psycopg2-binary), or add "
            "`scheme: postgresql+psycopg2` under postgres_db (postgres_url: postgresql+psycopg2://...)")


def check_postgres_driver(instance, home: str) -> None:
    """Refuse, before any work, a Dagster instance whose PostgreSQL storage is bound to a driver
    other than psycopg2.

    dagster-postgres builds a plain `postgresql://` URL from Dagster's documented `postgres_db`
    block and notifies listeners with `NOTIFY run_events, %(notify_id)s`, which only psycopg2's
    client-side parameter binding accepts. SQLAlchemy 2.1 made psycopg 3 the default driver of a
    plain `postgresql://`: the instance then creates its tables fine and fails the first event
    write of a run (`syntax error at or near "$1"`). Each storage's engine says which driver it got.
    """
    storages = (instance.run_storage, instance.event_log_storage, instance._schedule_storage)  # no public accessor
    for storage in storages:
        engine = getattr(storage, "_engine", None)
        if type(storage).__module__.startswith("dagster_postgres") and engine is not None:
            if engine.dialect.driver != "psycopg2":
                raise ConfigError(postgres_driver_problem(home, engine.dialect.driver))


def _innermost(exc: BaseException) -> str:
    """The first line of the deepest cause (a driver's "connection refused", not a wrapper's "too many retries")."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return f"{type(exc).__name__}: {lines[0]}"


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
