"""A run waiting for the `gpu` pool: it recovers a dead holder itself and goes on; SIGINT and SIGTERM
end the wait cleanly (the run canceled, its claim withdrawn, one line, exit code 128 + signal)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from embed_pipeline.defs.recovery import PID_TAG
from embed_pipeline_tests.pool_job import dead_pid, gpu_job, hold_the_pool

ROOT = Path(__file__).resolve().parents[1]


def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return home


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging when the waiting run never gets the slot (SIGALRM raises in the main thread)."""
    def expired(signum, frame):
        raise TimeoutError(f"no outcome within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def claims_of(instance: dg.DagsterInstance, run_id: str) -> list:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return [c for c in [*info.claimed_slots, *info.pending_steps] if c.run_id == run_id]


def test_a_run_waiting_for_the_pool_recovers_a_dead_holder_and_goes_on(project, tmp_path, monkeypatch, capsys):
    from embed_pipeline.console import Session

    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home(tmp_path)))
    session = Session(str(project))
    instance = session.instance
    pid = dead_pid()
    holder = hold_the_pool(instance, pid)
    with deadline(120):
        result = session.execute(gpu_job(), pool_check_seconds=0.2)
    assert result.success
    err = capsys.readouterr().err
    assert f"step(s) gpu_step waiting for pool 'gpu' (limit reached), held by run {holder[:8]} step embedding_model" in err
    assert f"recovered dead run {holder} (gpu_job, process {pid} is gone), which held pool 'gpu'" in err
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
    assert claims_of(instance, holder) == [] and claims_of(instance, result.run_id) == []


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_ends_a_run_waiting_for_a_live_holder_cleanly(project, tmp_path, stop):
    home = dagster_home(tmp_path)
    instance = dg.DagsterInstance.from_config(str(home))
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    log = tmp_path / "waiting.log"
    try:
        holder = hold_the_pool(instance, live.pid)
        env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
        with open(log, "wb") as out:
            waiting = subprocess.Popen([sys.executable, "-m", "embed_pipeline_tests.pool_job", str(project)],
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            limit = time.monotonic() + 120
            while "waiting for pool 'gpu'" not in log.read_text():
                assert waiting.poll() is None, log.read_text()
                assert time.monotonic() < limit, "the run never reported its wait:\n" + log.read_text()
                time.sleep(0.1)
            waiting.send_signal(stop)
            code = waiting.wait(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    finally:
        live.stdin.close()
        live.wait(timeout=30)
    text = log.read_text()
    lines = text.strip().splitlines()
    assert code == 128 + stop, text
    assert "Traceback" not in text and "Stack Trace" not in text
    (run,) = instance.get_runs(dg.RunsFilter(tags={PID_TAG: str(waiting.pid)}))
    name = "SIGINT (Ctrl-C)" if stop == signal.SIGINT else "SIGTERM"
    assert lines[-1] == (f"[embed-pipeline] interrupted by {name} while step(s) gpu_step waited for pool 'gpu': "
                         f"run {run.run_id} (gpu_job) canceled, its pool slots freed; the same command again goes on")
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert claims_of(instance, run.run_id) == []
    assert {c.step_key for c in claims_of(instance, holder)} == {"embedding_model"}  # a live holder is left alone
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.STARTED
