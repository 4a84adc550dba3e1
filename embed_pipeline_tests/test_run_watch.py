"""The pieces of a watched run that need no process: the one-line interrupt message, the traceback cut,
and who holds the pool."""

import logging
import signal
from types import SimpleNamespace

import dagster as dg

from embed_pipeline.defs.recovery import pool_holders
from embed_pipeline.run_watch import RunInterrupted, _CutInterruptTracebacks
from embed_pipeline_tests.pool_job import dead_pid, hold_the_pool


def error(cls_name, cause=None):
    return SimpleNamespace(cls_name=cls_name, cause=cause, context=None)


def record(message: str, err) -> logging.LogRecord:
    event = SimpleNamespace(event_specific_data=SimpleNamespace(error=err))
    line = logging.LogRecord("dagster", logging.ERROR, __file__, 1, message, (), None)
    line.dagster_meta = {"dagster_event": event}
    return line


def test_interrupt_tracebacks_are_cut_to_their_first_line_and_other_errors_to_one_line_with_their_cause():
    wall = 'STEP_FAILURE - Execution of step "embedding_model" failed.\n\nDagsterExecutionInterruptedError\n\nStack Trace:\n  File ...'
    cut = _CutInterruptTracebacks()
    interrupted = record(wall, error("DagsterExecutionInterruptedError"))
    assert cut.filter(interrupted) and interrupted.getMessage() == 'STEP_FAILURE - Execution of step "embedding_model" failed.'
    wrapped = record(wall, error("DagsterUserCodeExecutionError", cause=error("KeyboardInterrupt")))
    assert cut.filter(wrapped) and "\n" not in wrapped.getMessage()
    real_bug = record(wall.replace("DagsterExecutionInterruptedError", "ValueError"), error("ValueError"))
    assert cut.filter(real_bug) and "Stack Trace" not in real_bug.getMessage()  # the stack only with --verbose
    assert real_bug.getMessage().startswith('STEP_FAILURE - Execution of step "embedding_model" failed. ')
    assert real_bug.getMessage().endswith("(rerun with --verbose for the traceback)") and "\n" not in real_bug.getMessage()
    plain = logging.LogRecord("dagster", logging.INFO, __file__, 1, "step 5/60, loss 3.5", (), None)
    assert cut.filter(plain) and plain.getMessage() == "step 5/60, loss 3.5"


def test_an_interrupted_run_is_one_line_with_the_signal_and_exit_code_128_plus_n():
    stopped = RunInterrupted(signal.SIGTERM, "abc-123", "training_job", "during step embedding_model")
    assert stopped.exit_code == 143 and "\n" not in str(stopped)
    assert str(stopped) == ("interrupted by SIGTERM during step embedding_model: run abc-123 (training_job) canceled, its "
                            "pool slots freed; the same command again goes on (training resumes from its last checkpoint)")
    assert RunInterrupted(signal.SIGINT, "r", "promotion_job", "").exit_code == 130
    assert str(RunInterrupted(signal.SIGHUP, "r", "promotion_job", "")).startswith("interrupted by SIGHUP (terminal closed): run r")


def test_pool_holders_names_each_holding_run_once_and_the_steps_waiting(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        holder = hold_the_pool(instance, dead_pid())
        waiting_run = "0" * 8 + "-waiting"
        assert not instance.event_log_storage.claim_concurrency_slot("gpu", waiting_run, "corpus_index").is_claimed
        assert pool_holders(instance, "gpu", waiting_run) == (["corpus_index"], [f"run {holder[:8]} step embedding_model"])
        assert pool_holders(instance, "gpu", holder) == ([], [])
