"""A team's own `dagster.yaml`, written as Dagster's docs show it, on a real PostgreSQL with this
package installed: the `storage: postgres: postgres_db:` block and the `postgres_url` form (run,
event log and schedule storage each). With SQLAlchemy 2.1 + psycopg 3 both created their tables
and then failed the first event write of a run (`NOTIFY run_events, %(notify_id)s`: syntax error
at or near "$1"); the `postgres` extra's pins make a plain postgresql:// mean psycopg2. A driver
that cannot work is refused by the CLI at start, in one line with the fix.
"""

import sys
import time

import dagster as dg
import pytest
import yaml

from embed_pipeline import cli
from embed_pipeline_tests.fixture_data import write_project
from embed_pipeline_tests.test_deploy_postgres import Postgres

pytestmark = pytest.mark.slow

# https://docs.dagster.io/deployment/oss/dagster-yaml ("storage" with PostgreSQL), values filled in.
DOCS_BLOCK = """
storage:
  postgres:
    postgres_db:
      username: {user}
      password: unused
      hostname: 127.0.0.1
      db_name: {db}
      port: {port}
"""

# The same docs' per-storage form with a full URL.
URL_BLOCK = """
run_storage:
  module: dagster_postgres.run_storage
  class: PostgresRunStorage
  config:
    postgres_url: "{url}"
event_log_storage:
  module: dagster_postgres.event_log
  class: PostgresEventLogStorage
  config:
    postgres_url: "{url}"
schedule_storage:
  module: dagster_postgres.schedule_storage
  class: PostgresScheduleStorage
  config:
    postgres_url: "{url}"
"""


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    yield server
    server.close()


def home_with(tmp_path, name: str, text: str):
    home = tmp_path / name
    home.mkdir()
    (home / "dagster.yaml").write_text(text)
    return home


def test_embed_pipeline_run_on_dagsters_documented_postgres_db_block(tmp_path, postgres, tiny_model_path, monkeypatch):
    postgres.create_database("docs_block")
    home = home_with(tmp_path, "dagster_home", DOCS_BLOCK.format(user=postgres.user, db="docs_block", port=postgres.port))
    config = write_project(tmp_path / "project", tiny_model_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)

    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_OK

    ((run_id, status),) = postgres.query("docs_block", "select run_id, status from runs where pipeline_name = 'training_job'")
    assert status == "SUCCESS"
    materialized = postgres.query("docs_block", "select count(*) from event_logs where run_id = %s and "
                                  "dagster_event_type = 'ASSET_MATERIALIZATION'", run_id)
    assert materialized[0][0] >= 9, materialized  # the training job's nine assets, each event NOTIFYed
    assert postgres.query("docs_block", "select count(*) from asset_keys where asset_key like %s", '%"eval_report"%')[0][0] == 1


def test_a_materialisation_and_a_tick_on_the_postgres_url_form(tmp_path, postgres):
    from dagster._core.scheduler.instigation import InstigatorType, TickData, TickStatus

    postgres.create_database("url_form")
    home = home_with(tmp_path, "dagster_home", URL_BLOCK.format(url=postgres.url("url_form")))

    @dg.asset
    def counted() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 3})

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert {type(s).__name__: s._engine.dialect.driver for s in (instance.run_storage, instance.event_log_storage,
                                                                     instance._schedule_storage)} == {
            "PostgresRunStorage": "psycopg2", "PostgresEventLogStorage": "psycopg2", "PostgresScheduleStorage": "psycopg2"}
        result = dg.materialize([counted], instance=instance)
        assert result.success
        tick = instance.create_tick(TickData(instigator_origin_id="origin", instigator_name="a_sensor",
                                             instigator_type=InstigatorType.SENSOR, status=TickStatus.SKIPPED,
                                             timestamp=time.time(), selector_id="selector"))
        assert tick.tick_id
    finally:
        instance.dispose()
    assert postgres.query("url_form", "select count(*) from event_logs where run_id = %s and "
                          "dagster_event_type = 'ASSET_MATERIALIZATION'", result.run_id) == [(1,)]
    assert postgres.query("url_form", "select status from job_ticks where job_origin_id = 'origin'") == [("SKIPPED",)]


def test_a_driver_dagster_postgres_cannot_use_is_refused_at_start(tmp_path, postgres, tiny_model_path, monkeypatch, capsys):
    postgres.create_database("psycopg3")
    block = yaml.safe_load(DOCS_BLOCK.format(user=postgres.user, db="psycopg3", port=postgres.port))
    block["storage"]["postgres"]["postgres_db"]["scheme"] = "postgresql+psycopg"  # psycopg 3, as SQLAlchemy 2.1's default
    home = home_with(tmp_path, "dagster_home", yaml.safe_dump(block))
    config = write_project(tmp_path / "project", tiny_model_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)

    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_CONFIG
    line = capsys.readouterr().err.strip().splitlines()[-1]
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:  # psycopg 3 installed: the driver SQLAlchemy 2.1 would pick
        assert "uses PostgreSQL through psycopg, but dagster-postgres needs psycopg2" in line
    else:  # a fresh install has psycopg2 only: the same refusal, naming the driver as missing
        assert "needs the PostgreSQL driver psycopg, which is not installed (dagster-postgres needs psycopg2)" in line
    assert "pip install 'embed-pipeline[postgres]'" in line and "scheme: postgresql+psycopg2" in line
    tables = postgres.query("psycopg3", "select count(*) from pg_tables where tablename = 'runs'")
    assert tables == [(0,)] or postgres.query("psycopg3", "select count(*) from runs") == [(0,)], "refused before any run"

    # The driver SQLAlchemy picks is not installed at all (SQLAlchemy 2.1 without psycopg 3): the same one line.
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails as if it were not installed
    assert cli.main(["run", "--config", str(config)]) == cli.EXIT_CONFIG
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs the PostgreSQL driver psycopg, which is not installed (dagster-postgres needs psycopg2)" in line
    assert "scheme: postgresql+psycopg2" in line
