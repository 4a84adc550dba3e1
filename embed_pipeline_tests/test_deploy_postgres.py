"""The production deployment on real servers: a throwaway PostgreSQL, `mlflow server` on it, and a
Dagster instance on it (deploy/dagster.yaml) with the real `dagster-daemon` and webserver, all
started with the README's "Deploying it" commands. Then: two training runs launched at once (both
finish, each with its own report), the nightly schedule's tick, a daemon restart while they run,
the promotion sensor promoting. Everything is asserted where it lives: Dagster's and MLflow's
tables in PostgreSQL, queried with SQL. A database that cannot be reached is an error at start.
"""

import getpass
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from embed_pipeline_tests.fixture_data import write_project
from embed_pipeline_tests.test_lifecycle import DEFS_MODULE, Deployment, free_port, stop, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_BIN_DIRS = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


def readme_commands() -> list[str]:
    """The shell lines of the README's deploy block (the one that starts the MLflow server)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text.split("## Deploying it", 1)[1], re.S)
    (block,) = [b for b in blocks if "mlflow server" in b]
    return [line.split("   #", 1)[0].strip() for line in block.strip().splitlines() if not line.startswith("#")]


def expand(line: str, env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], token) for token in shlex.split(line)]


def pg_tool(name: str) -> str:
    found = [d / name for d in PG_BIN_DIRS if (d / name).exists()] or ([Path(shutil.which(name))] if shutil.which(name) else [])
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed: apt-get install postgresql (.ci/run does)")
    return str(found[0])


class Postgres:
    """initdb + pg_ctl into a temp dir, trust auth on a free loopback port; as `postgres` when we are root
    (PostgreSQL refuses to run as root)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="embed-pg-"))  # not under pytest's 0700 tmp: `postgres` must reach it
        self.as_owner = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres" if os.geteuid() == 0 else getpass.getuser()
        self.port = free_port()
        self.data = self.root / "data"
        self._run(pg_tool("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")
        self._run(pg_tool("pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "postgres.log"),
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off", "start")

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_owner, *command], check=True, capture_output=True, timeout=120)

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, *params) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(self.url(db))
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def create_database(self, name: str) -> None:
        import psycopg2

        connection = psycopg2.connect(self.url("postgres"))
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'create database "{name}"')
        finally:
            connection.close()

    def close(self) -> None:
        self._run(pg_tool("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresDeployment(Deployment):
    """The lifecycle test's deployment helpers (launch, wait, handles, serving) over the README's
    production commands: MLflow server and Dagster instance on PostgreSQL."""

    def __init__(self, tmp_path: Path, postgres: Postgres, tiny_model_path: str):
        self.tmp, self.postgres = tmp_path, postgres
        self.port, mlflow_port = free_port(), free_port()
        env = {**os.environ, "PATH": f"{BIN}:{Path(pg_tool('initdb')).parent}:{os.environ['PATH']}",
               "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port), "PGUSER": postgres.user, "PGPASSWORD": "unused",
               "MLFLOW_ARTIFACTS": str(tmp_path / "mlflow-artifacts"), "MLFLOW_HOST": "127.0.0.1",
               "MLFLOW_PORT": str(mlflow_port), "DAGSTER_WEB_HOST": "127.0.0.1", "DAGSTER_WEB_PORT": str(self.port),
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.config = write_project(tmp_path / "project", tiny_model_path, index={"shards": 2},
                                    mlflow_tracking_uri=f"http://127.0.0.1:{mlflow_port}")
        # Ours win over the README's example paths; everything else is the README's.
        ours = {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "EMBED_PIPELINE_CONFIG": str(self.config)}
        (tmp_path / "lifecycle_defs.py").write_text(DEFS_MODULE)  # the production graph; the schedule gated by a flag
        (tmp_path / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_file": {
            "relative_path": "lifecycle_defs.py", "location_name": "embed_pipeline"}}]}))
        self.processes, self.logs, self.commands, self.retired = {}, {}, {}, []
        for line in readme_commands():
            if line.startswith("export "):
                for assignment in shlex.split(line)[1:]:
                    name, value = assignment.split("=", 1)
                    env[name] = ours.get(name) or expand(value, env)[0]
            elif line.startswith(("mlflow server", "MLFLOW_", "dagster-daemon", "dagster-webserver")):
                words = expand(line, env)
                extra = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
                command = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
                name = {"mlflow": "mlflow", "dagster-daemon": "daemon", "dagster-webserver": "webserver"}[command[0]]
                self.commands[name] = (command, {**env, **extra})
                if name == "mlflow":  # now; the daemon and the webserver once the instance's schema exists (below)
                    self.start("mlflow")
                    wait_for("the MLflow server", lambda: self._get(f"http://127.0.0.1:{mlflow_port}/health"), 120)
            elif line.startswith(("createdb ", "mkdir ")):
                subprocess.run(["bash", "-c", line], cwd=REPO, env=env, check=True, timeout=60)
            else:
                pytest.fail(f"the README's deploy block has a line this test does not run: {line}")
        from embed_pipeline.lib.config import load_config

        self.settings = load_config(self.config)
        # One process creates the schema: the daemon and the webserver creating it at once race.
        self.instance = self._instance()
        self.instance.get_runs(limit=1)
        self.start("daemon")
        self.start("webserver")
        wait_for("the webserver", lambda: self._get(f"http://127.0.0.1:{self.port}/server_info"), 120)
        from dagster_graphql import DagsterGraphQLClient

        from embed_pipeline.lib.tracking import Tracker

        self.client = DagsterGraphQLClient("127.0.0.1", port_number=self.port)
        self.tracker = Tracker(self.settings.tracking_uri, self.settings.mlflow_artifacts_uri)

    def _instance(self) -> dg.DagsterInstance:
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.commands["daemon"][1].items() if k.startswith("DAGSTER_")})
        try:
            return dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"])
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @staticmethod
    def _get(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, name: str) -> None:
        command, env = self.commands[name]
        self.logs[name] = open(self.tmp / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, env=env, cwd=self.tmp, stdout=self.logs[name],
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def restart_daemon(self) -> None:
        old = self.processes["daemon"]
        old.terminate()
        old.wait(timeout=120)
        self.retired.append(old.pid)  # its process group: the runs it launched, until they end
        self.start("daemon")

    def close(self) -> None:
        for process in self.processes.values():
            stop(process)
        for group in self.retired:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                continue  # every process of that group has ended
        for handle in self.logs.values():
            handle.close()
        if getattr(self, "instance", None) is not None:
            self.instance.dispose()


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    yield server
    server.close()


def test_training_promotion_schedule_and_a_daemon_restart_on_postgres_and_an_mlflow_server(tmp_path, postgres,
                                                                                          tiny_model_path):
    for db in ("dagster", "mlflow"):
        assert not postgres.query("postgres", "select 1 from pg_database where datname = %s", db)
    deployment = PostgresDeployment(tmp_path, postgres, tiny_model_path)
    try:
        assert postgres.query("postgres", "select count(*) from pg_database where datname in ('dagster', 'mlflow')") == [(2,)]
        # Two training runs at once, and the nightly schedule's tick beside them.
        pair = [deployment.launch(), deployment.launch()]
        (tmp_path / "night.flag").touch()
        wait_for("a training step under way", lambda: postgres.query(
            "dagster", "select 1 from event_logs where run_id = any(%s) and dagster_event_type = 'STEP_START'", pair), 300)
        # The daemon restarts (SIGTERM to it, as a service manager's stop does) while training runs
        # are under way: they go on in their own processes and the new daemon picks up the queue.
        deployment.restart_daemon()
        (night,) = wait_for("the nightly run", lambda: deployment.runs(**{"dagster/schedule_name": "nightly_retraining"}), 150)
        runs = [*pair, night.run_id]
        for run_id in runs:
            deployment.wait_run(run_id)
        reports = [deployment.handle("eval_report", run_id)["path"] for run_id in runs]
        for run_id, path in zip(runs, reports):
            assert f"/assets/eval_report/{run_id}/" in path
            assert json.loads(Path(path).read_text())["gate"]["passed"]
        candidates = {json.loads(Path(p).read_text())["models"]["candidate"]["version"] for p in reports}
        assert candidates == {"1", "2", "3"}, "each run registered and judged its own model"
        # The promotion sensor promotes the newest report's candidate (its own run key), through the daemon.
        wait_for("a promotion", lambda: deployment.alias() is not None, 300)
        deployment.idle()
        champion = deployment.alias()

        # Dagster's own tables in PostgreSQL: the runs and their events.
        statuses = dict(postgres.query("dagster", "select run_id, status from runs where run_id = any(%s)", runs))
        assert statuses == {run_id: "SUCCESS" for run_id in runs}
        promotions = postgres.query("dagster", "select run_id from runs where pipeline_name = 'promotion_job' and status = 'SUCCESS'")
        assert promotions, "the promotion sensor's run"
        events = dict(postgres.query("dagster", "select run_id, count(*) from event_logs where run_id = any(%s) and "
                                     "dagster_event_type = 'ASSET_MATERIALIZATION' group by run_id", runs))
        assert all(events[run_id] >= 9 for run_id in runs), events  # the training job's nine assets
        ticks = postgres.query("dagster", "select tick_body from job_ticks where type = 'SCHEDULE' and status = 'SUCCESS'")
        assert any(night.run_id in json.loads(body)["run_ids"] for (body,) in ticks), "the schedule's tick, with its run"

        # MLflow's tables in PostgreSQL: the training runs, their metrics, the versions and the champion alias.
        tagged = postgres.query("mlflow", "select r.run_uuid, r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                                "where t.key = 'dagster_run_id' and t.value = any(%s)", runs)
        assert {dagster_run for _, _, dagster_run in tagged} == set(runs) and {s for _, s, _ in tagged} == {"FINISHED"}
        mlflow_runs = [run_uuid for run_uuid, _, _ in tagged]
        losses = postgres.query("mlflow", "select run_uuid, count(*) from metrics where run_uuid = any(%s) and key like 'train/%%' "
                                "group by run_uuid", mlflow_runs)
        assert len(losses) == len(mlflow_runs) and all(n > 0 for _, n in losses)
        name = deployment.settings.registered_model_name
        versions = postgres.query("mlflow", "select version, run_id, source, storage_location from model_versions where name = %s",
                                  name)
        assert {str(v) for v, _, _, _ in versions} == {"1", "2", "3"}
        # Each version is the run's flavour-logged MLflow model (models:/<model id>), kept in the server's artifact store.
        assert all(source.startswith("models:/m-") and stored.startswith("mlflow-artifacts:") and run_id in mlflow_runs
                   for _, run_id, source, stored in versions), versions
        (artifact_location,) = postgres.query("mlflow", "select artifact_location from experiments where name = 'embed-pipeline'")
        assert artifact_location[0].startswith("mlflow-artifacts:")
        assert postgres.query("mlflow", "select version from registered_model_aliases where name = %s and alias = 'champion'",
                              name) == [(int(champion),)]
        served = deployment.served()
        assert served["model_version"] == champion

        # What the two UIs show, through their own APIs: the Dagster webserver's GraphQL and MLflow's REST.
        query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName assetMaterializations { assetKey { path } } } } }"
        request = urllib.request.Request(f"http://127.0.0.1:{deployment.port}/graphql", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"query": query, "variables": {"id": night.run_id}}).encode())
        with urllib.request.urlopen(request) as reply:
            shown = json.loads(reply.read())["data"]["runOrError"]
        assert shown["status"] == "SUCCESS" and {"eval_report"} <= {m["assetKey"]["path"][0] for m in shown["assetMaterializations"]}
        mlflow_url = deployment.settings.tracking_uri
        with urllib.request.urlopen(f"{mlflow_url}/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion") as reply:
            by_alias = json.loads(reply.read())["model_version"]
        assert by_alias["version"] == champion and by_alias["source"].startswith("models:/m-")
        print(json.dumps({"dagster_run": {"id": night.run_id, **shown, "assetMaterializations": len(shown["assetMaterializations"])},
                          "dagster_runs_table": sorted(postgres.query("dagster", "select pipeline_name, status, count(*) from runs "
                                                                      "group by pipeline_name, status")),
                          "mlflow_champion": {k: by_alias[k] for k in ("name", "version", "source", "run_id", "aliases")},
                          "mlflow_model_versions": sorted(versions)}, default=str, indent=1))
    finally:
        deployment.close()


def test_an_unreachable_database_is_a_clear_error_at_start_never_sqlite(tmp_path, postgres, tiny_model_path, monkeypatch,
                                                                        capsys):
    config = write_project(tmp_path / "project", tiny_model_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    postgres.create_database("cli_check")
    closed = free_port()
    monkeypatch.chdir(tmp_path)
    for name, value in {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(closed),
                        "DAGSTER_PG_USER": postgres.user, "DAGSTER_PG_PASSWORD": "unused", "DAGSTER_PG_DB": "cli_check"}.items():
        monkeypatch.setenv(name, value)
    from embed_pipeline.cli import main

    def last_line() -> str:
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert main(["run", "--config", str(config)]) == 2
    line = last_line()
    assert "config error: the Dagster instance in" in line and f"port {closed}" in line and "Connection refused" in line

    # The Dagster storage is right, the MLflow database URL is not (a password in it is never printed).
    monkeypatch.setenv("DAGSTER_PG_PORT", str(postgres.port))
    settings = yaml.safe_load(config.read_text())
    settings["mlflow_tracking_uri"] = f"postgresql://{postgres.user}:secret@127.0.0.1:{closed}/mlflow"
    config.write_text(yaml.safe_dump(settings))
    assert main(["run", "--config", str(config)]) == 2
    line = last_line()
    assert f"cannot reach the MLflow store at postgresql://{postgres.user}:***@127.0.0.1:{closed}/mlflow" in line
    assert "Connection refused" in line and "secret" not in line

    # A typo that MLflow would take for a folder name.
    settings["mlflow_tracking_uri"] = f"postgresql//127.0.0.1:{postgres.port}/mlflow"
    config.write_text(yaml.safe_dump(settings))
    assert main(["run", "--config", str(config)]) == 2
    assert "mlflow_tracking_uri: not an MLflow store URI" in last_line()
    assert not list(tmp_path.rglob("*.db")), "no SQLite store appeared, for Dagster or MLflow"
    assert not (tmp_path / "postgresql").exists(), "no file store named after the typo"
