"""`embed-pipeline run`'s exit codes where the run itself succeeds."""

import dagster as dg

from embed_pipeline import cli
from embed_pipeline.console import Session
from embed_pipeline_tests.fixture_data import write_project


def test_a_run_that_succeeds_without_an_eval_report_is_a_failure_not_a_refusal(tmp_path, tiny_model_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    config_path = write_project(tmp_path / "project", tiny_model_path)

    @dg.asset(name="something_else")
    def something_else() -> None:
        """A green run whose graph wrote no eval report (as when eval_report is left out of it)."""

    def execute(self, job_name, verbose=False, **kwargs):
        return dg.materialize([something_else], instance=self.instance)

    monkeypatch.setattr(Session, "execute", execute)
    code = cli.main(["run", "--config", str(config_path)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED, err
    assert "succeeded but produced no eval report" in err and "REFUSED" not in err
