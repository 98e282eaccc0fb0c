"""Clean stops: SIGINT (Ctrl-C) or SIGTERM to a run stops its workers and cancels its SLURM
jobs, says in one line what it did and how to resume, and exits 130 or 143.

daisy's server holds the main thread in Rust, where a Python signal handler would wait until
the run ends; so the signal wakes a thread of ours instead (``signal.set_wakeup_fd``), which
stops the run from there and ends the process. While daisy runs it takes SIGINT itself and
raises KeyboardInterrupt, which the run hands to the same stop. Every block a worker finished
is in the RAG, so the same command resumes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from neurosam.layout import RunPlan
from neurosam.pipeline.launchers import cancel_submitted_jobs
from neurosam.pipeline.lock import WorkDirLock
from neurosam.pipeline.tasks import block_count
from neurosam.rag import open_rag

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How long workers get to end on SIGTERM (a SLURM launcher cancels its job) before SIGKILL.
GRACE_SECONDS = 10.0
#: daisy replaces a worker that dies: the workers are gone once none has been seen this long.
QUIET_SECONDS = 1.0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, children first, from /proc (zombies, dead and not yet
    reaped, are left out)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if state != "Z":
                children.setdefault(int(parent), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found.extend(frontier)
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _end_all(signum: int, seconds: float) -> None:
    """Signal every process below this one, and the workers daisy starts in their place, until
    none has been seen for ``QUIET_SECONDS`` or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < QUIET_SECONDS:
        found = descendants(os.getpid())
        if found:
            _signal_all(found, signum)
            quiet_since = time.monotonic()
        time.sleep(0.1)


def stop_workers() -> None:
    """SIGTERM to this process's workers (a SLURM launcher cancels its job on it), SIGKILL to
    those still there after the grace period."""
    _end_all(signal.SIGTERM, GRACE_SECONDS)
    _end_all(signal.SIGKILL, GRACE_SECONDS)


class StopOnSignal:
    """Installed for the whole run; ``plan`` is set once the run is planned, for the count of
    finished blocks in the final line."""

    def __init__(self, work_dir: Path, lock: WorkDirLock):
        self.work_dir = work_dir
        self.lock = lock
        self.plan: RunPlan | None = None
        self.stopping = threading.Lock()

    def __enter__(self) -> StopOnSignal:
        """Signals reach the main thread's handlers only: a run in another thread (tests) is left
        to the default handling."""
        self._installed = threading.current_thread() is threading.main_thread()
        if not self._installed:
            return self
        self._console = os.dup(2)
        self._read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._write_end = write_end
        self._previous = {signum: signal.signal(signum, lambda *_: None) for signum in STOP_SIGNALS}
        self._previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=self._wait, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._installed:
            return
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._write_end)
        os.close(self._console)

    def _wait(self) -> None:
        try:
            received = os.read(self._read_end, 1)
        finally:
            os.close(self._read_end)
        if received and received[0] in STOP_SIGNALS:
            self.stop(signal.Signals(received[0]))

    def hold_if_stopping(self) -> None:
        """For the main thread once daisy returns: the workers killed here may have made daisy
        give the run up, and the stop, not a report of failed blocks, ends it."""
        if self.stopping.locked():
            threading.Event().wait()

    def stop(self, signum: signal.Signals) -> None:
        """Whatever fails here, the process ends with the signal's status. Called by the thread
        that the signal wakes, or by the main thread for a SIGINT that daisy took itself (it
        installs its own handler while it runs, and raises KeyboardInterrupt). The second of
        two callers waits for the first to end it all."""
        if not self.stopping.acquire(blocking=False):
            threading.Event().wait()
        try:
            stop_workers()
            try:
                cancelled = cancel_submitted_jobs(self.work_dir)
                jobs = f", {len(cancelled)} SLURM jobs cancelled" if cancelled else ""
            except RuntimeError as error:
                jobs = f", but {error}"
            done = self._blocks_done()
            self.lock.release()
            os.write(self._console, f"neurosam: stopped by {signum.name}: workers stopped{jobs}{done}; "
                                    "run the same command to resume\n".encode())
        finally:
            os._exit(128 + signum)

    def _blocks_done(self) -> str:
        if self.plan is None:
            return ""
        with open_rag(self.plan.config.rag.url) as rag:
            done = sum(len(rag.done_blocks(task_id)) for task_id in self.plan.tasks)
        total = sum(block_count(task) for task in self.plan.tasks.values())
        return f", {done} of {total} blocks done and kept"
