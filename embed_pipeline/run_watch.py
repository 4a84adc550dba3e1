"""What a CLI run does besides executing: watch the `gpu` pool, recover dead holders, end cleanly on a signal.

Dagster's in-process executor waits for a pool slot in a loop that never looks at interrupts: it
captures Ctrl-C and SIGTERM (into a flag it reads only when a step starts) and, when the slot's
holder is a run whose process died, waits for ever. So while a run executes, a watcher thread

- re-checks the pool's holders every few seconds and, while one of the run's steps waits, recovers
  holders whose process is gone (`defs/recovery.recover_dead_runs`), naming them; the waiting
  step then gets the freed slot at Dagster's next claim check (at most 15 s later);
- learns of SIGINT, SIGTERM and SIGHUP through `signal.set_wakeup_fd` (Python writes the signal
  number there whatever handler Dagster installed) and, when the run is stuck waiting for the
  pool, marks it canceling and interrupts the main thread (SIGUSR1, whose handler raises
  `KeyboardInterrupt`, which Dagster turns into a canceled run);

and an interrupted step (Dagster raises its interrupt error inside the step) marks the run
canceling from an event listener, so the run ends CANCELED, not FAILURE. Afterwards the caller
gets `RunInterrupted`: one line naming the signal, the run and what it was doing. Dagster's
interrupt tracebacks (~180 lines of library frames that say nothing the line does not) are cut
to their first line unless the run is verbose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator

POOL = "gpu"
SIGNAL_NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP (terminal closed)"}
_INTERRUPT_ERRORS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


_AFTER_TRAINING = ("corpus_index", "eval_report")  # steps that run once embedding_model has registered its version


class RunInterrupted(Exception):
    """A run ended by a signal: canceled, its pool slots freed. `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, run_id: str, job_name: str, doing: str):
        self.signum, self.run_id, self.exit_code = signum, run_id, 128 + signum
        resume = ""
        if job_name == "training_job":  # after training registered its model, the next run reuses that model
            resume = (" (its registered model is reused, not trained again)" if any(step in doing for step in _AFTER_TRAINING)
                      else " (training resumes from its last checkpoint)")
        name = SIGNAL_NAMES.get(signum, signal.Signals(signum).name)
        super().__init__(f"interrupted by {name}{' ' + doing if doing else ''}: "
                         f"run {run_id} ({job_name}) canceled, its pool slots freed; the same command again goes on{resume}")


class _PoolWaitInterrupt(KeyboardInterrupt):
    """Raised in the main thread to end Dagster's wait for a pool slot."""


def _is_interrupt(error) -> bool:
    """Whether a Dagster `SerializableErrorInfo` (or anything in its cause/context chain) is an interrupt."""
    while error is not None:
        if error.cls_name in _INTERRUPT_ERRORS or error.cls_name == _PoolWaitInterrupt.__name__:
            return True
        error = error.cause or error.context
    return False


def _event_error(event):
    return getattr(getattr(event, "event_specific_data", None), "error", None)


class _CutInterruptTracebacks(logging.Filter):
    """One line for Dagster's log line of a failed or interrupted step or run (the console without
    `--verbose`): an interrupt keeps its first line; any other error its first line and the
    innermost cause's first line, with a pointer to `--verbose` for the stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None) or {}
        error = _event_error(meta.get("dagster_event"))
        if error is None:
            return True
        first = record.getMessage().split("\n", 1)[0]
        if _is_interrupt(error):
            record.msg, record.args = first, ()
            return True
        while getattr(error, "cause", None) is not None:
            error = error.cause
        cause = " ".join((getattr(error, "message", "") or "").split())[:300]
        record.msg, record.args = f"{first} {cause} (rerun with --verbose for the traceback)", ()
        return True


def quiet_console_logger():
    """Dagster's colored console logger (same config: `log_level`, `name`) with interrupt tracebacks cut."""
    import dagster as dg

    @dg.logger(config_schema=dg.colored_console_logger.config_schema,
               description="Dagster's colored console logger; interrupt tracebacks cut to one line")
    def console(init_context):
        logger = dg.colored_console_logger.logger_fn(init_context)
        for handler in logger.handlers:
            handler.addFilter(_CutInterruptTracebacks())
        return logger

    return console


class RunWatch:
    """The watcher of one run (see the module docstring). Use as a context manager around the execution."""

    def __init__(self, instance, run_id: str, job_name: str, report: Callable[[str], None],
                 recover: Callable[[], list], every: float = 3.0):
        self.instance, self.run_id, self.job_name, self.report, self.recover, self.every = (
            instance, run_id, job_name, report, recover, every)
        self.signals: list[int] = []
        self.doing = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._on_main = threading.current_thread() is threading.main_thread()
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None

    # -- the run's own events (main thread) ---------------------------------------------------
    def _on_event(self, record) -> None:
        event = record.dagster_event
        if event is not None and event.is_step_failure and _is_interrupt(_event_error(event)):
            self.doing = self.doing or f"during step {event.step_key}"
            self._cancel()

    def _cancel(self) -> None:
        run = self.instance.get_run_by_id(self.run_id)
        import dagster as dg

        if run is not None and run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
            self.instance.report_run_canceling(run, message="interrupted by a signal to the embed-pipeline process")

    # -- signals --------------------------------------------------------------------------------
    def _drain(self) -> list[int]:
        """Signal numbers written to the wakeup socket since the last read."""
        got = []
        with contextlib.suppress(BlockingIOError):
            while data := self._reader.recv(64):
                got += [n for n in data if n in SIGNAL_NAMES]
        with self._lock:
            self.signals += got
        return got

    def _waiting_steps(self) -> list[str]:
        from embed_pipeline.defs.recovery import pool_holders

        return pool_holders(self.instance, POOL, self.run_id)[0]

    def _end_pool_wait(self) -> bool:
        """After a stop signal: end Dagster's wait for the pool if the run is in it. False: look again
        shortly (the main thread has not run Dagster's handler yet)."""
        from dagster._utils.interrupts import check_captured_interrupt

        waiting = self._waiting_steps()
        if not waiting:
            return True  # a step runs (Dagster raises the interrupt in it) or the run is over
        # Dagster's captured-interrupt flag stays set only while no step runs (a running step
        # raises at once and clears it): with a step of ours waiting, that is the wait loop.
        if not check_captured_interrupt():
            return False
        self.doing = f"while step(s) {', '.join(waiting)} waited for pool '{POOL}'"
        self._cancel()
        signal.pthread_kill(self._main, signal.SIGUSR1)
        return True

    # -- the pool -------------------------------------------------------------------------------
    def _check_pool(self, last: tuple) -> tuple:
        """Say when this run's wait for the pool starts or its holders change; recover dead holders."""
        from embed_pipeline.defs.recovery import pool_holders

        waiting, holders = pool_holders(self.instance, POOL, self.run_id)
        state = (tuple(waiting), tuple(holders))
        if waiting and state != last:
            self.report(f"step(s) {', '.join(waiting)} waiting for pool '{POOL}' (limit reached), held by "
                        f"{'; '.join(holders) or 'no run (the slot is being handed over)'}; holders are re-checked "
                        f"every {self.every:g} s and a dead one is recovered")
        if waiting:
            for dead in self.recover():
                self.report(f"recovered dead run {dead.run_id} ({dead.job_name}, process {dead.pid} is gone), which held "
                            f"pool '{POOL}': marked failed, its slots freed; run {self.run_id[:8]} goes on")
        return state

    def _watch(self) -> None:
        last: tuple = ()
        stopping = False  # a stop signal arrived and the pool wait (if any) is not ended yet
        while not self._stop.is_set():
            timeout = 0.1 if stopping else self.every
            if self._reader is not None:
                readable, _, _ = select.select([self._reader], [], [], timeout)
                if readable and self._drain():
                    stopping = True
            elif self._stop.wait(timeout):
                return
            try:
                if stopping:
                    stopping = not self._end_pool_wait()
                else:
                    last = self._check_pool(last)
            except Exception as exc:  # noqa: BLE001 - a watcher must never break the run it watches
                self.report(f"pool watcher: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")

    # -- the context ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def watching(self) -> Iterator[RunWatch]:
        self.instance.add_event_listener(self.run_id, self._on_event)
        with contextlib.ExitStack() as stack:
            if self._on_main:  # signal handlers and the wakeup fd belong to the main thread
                stack.enter_context(self._signal_handling())
            thread = threading.Thread(target=self._watch, name=f"pool-watch-{self.run_id[:8]}", daemon=True)
            thread.start()
            stack.callback(thread.join)
            stack.callback(self._stop_watcher)
            yield self

    def _stop_watcher(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.send(b"\0")  # wakes the watcher's select at once (0 is no signal number)

    @contextlib.contextmanager
    def _signal_handling(self) -> Iterator[None]:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._reader, self._writer = reader, writer

        def raise_interrupt(signum, frame):
            raise _PoolWaitInterrupt()

        def hangup(signum, frame):  # a closed terminal is handled like Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)

        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        previous_usr1 = signal.signal(signal.SIGUSR1, raise_interrupt)
        previous_hup = signal.signal(signal.SIGHUP, hangup)
        try:
            yield
        finally:
            signal.signal(signal.SIGHUP, previous_hup)
            signal.signal(signal.SIGUSR1, previous_usr1)
            signal.set_wakeup_fd(previous_fd)
            self._drain()  # a signal the watcher had no time to read still counts
            self._reader = self._writer = None
            reader.close()
            writer.close()

    def interrupted(self) -> RunInterrupted | None:
        """The error to raise after the run ended, when a stop signal arrived during it."""
        if not self.signals:
            return None
        self.instance.event_log_storage.free_concurrency_slots_for_run(self.run_id)
        return RunInterrupted(self.signals[0], self.run_id, self.job_name, self.doing or "")
