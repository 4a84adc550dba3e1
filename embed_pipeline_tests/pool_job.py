"""A one-step job that holds the `gpu` pool, and an entry point that runs it through the CLI's session
(`python -m embed_pipeline_tests.pool_job CONFIG`): pool waits and signals without training anything."""

import socket
import subprocess
import sys

import dagster as dg

from embed_pipeline.defs.recovery import HOST_TAG, PID_TAG


@dg.asset(pool="gpu")
def gpu_step() -> int:
    return 1


def gpu_job() -> dg.JobDefinition:
    return dg.Definitions(assets=[gpu_step], jobs=[dg.define_asset_job("gpu_job", selection=[gpu_step])]).resolve_job_def("gpu_job")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def hold_the_pool(instance: dg.DagsterInstance, pid: int) -> str:
    """A STARTED `gpu_job` run of this host, tagged with `pid`, holding the `gpu` pool's one slot."""
    run = instance.create_run_for_job(gpu_job(), status=dg.DagsterRunStatus.STARTED,
                                      tags={PID_TAG: str(pid), HOST_TAG: socket.gethostname()})
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    claim = instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "embedding_model")
    assert claim.is_claimed
    return run.run_id


def main(argv: list[str]) -> int:
    from embed_pipeline.console import Session, say
    from embed_pipeline.run_watch import RunInterrupted

    session = Session(argv[0])
    try:
        result = session.execute(gpu_job(), pool_check_seconds=0.2)
    except RunInterrupted as exc:  # as cli.main does
        say(str(exc))
        return exc.exit_code
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
