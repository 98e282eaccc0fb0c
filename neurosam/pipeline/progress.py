"""Progress a person can read in a terminal or a SLURM log: blocks done / total, rate and ETA per
task, in pipeline order, every few seconds for the tasks that moved (no bars that garble log
files), also written to progress.log."""

from __future__ import annotations

import time
from pathlib import Path


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLog:
    """A daisy progress observer (on_start / on_progress / on_finish)."""

    def __init__(self, task_order: list[str], log_path: Path, interval_seconds: float = 5.0, echo: bool = True):
        self.task_order = task_order
        self.log_path = log_path
        self.interval_seconds = interval_seconds
        self.echo = echo
        self.started: dict[str, tuple[float, int]] = {}
        self.reported: dict[str, int] = {}
        self.last_report = 0.0

    def _line(self, task_id: str, state, now: float) -> str:
        done = state.completed_count
        total = state.total_block_count
        line = f"{task_id:<24} {done:>7}/{total:<7} ({100.0 * done / max(total, 1):5.1f}%)"
        if state.failed_count:
            line += f" failed {state.failed_count}"
        if task_id not in self.started and (done or state.processing_count):
            self.started[task_id] = (now, done)
        if task_id in self.started and done < total:
            start_time, start_done = self.started[task_id]
            rate = (done - start_done) / max(now - start_time, 1e-9)
            if rate > 0:
                line += f"  {rate:6.2f} blocks/s  ETA {_duration((total - done) / rate)}"
        return line

    def _report(self, states, now_anyway: bool = False, every_task: bool = False) -> None:
        """Tasks whose count moved since their last line (every task at the start), at most
        every ``interval_seconds`` unless ``now_anyway``."""
        now = time.monotonic()
        if not now_anyway and now - self.last_report < self.interval_seconds:
            return
        self.last_report = now
        changed = [
            t for t in self.task_order
            if t in states and (every_task or states[t].completed_count != self.reported.get(t))
        ]
        if not changed:
            return
        lines = [self._line(task_id, states[task_id], now) for task_id in changed]
        self.reported.update({task_id: states[task_id].completed_count for task_id in changed})
        stamp = time.strftime("%H:%M:%S")
        text = "\n".join(f"[{stamp}] {line}" for line in lines) + "\n"
        with self.log_path.open("a") as log:
            log.write(text)
        if self.echo:
            print(text, end="", flush=True)

    def on_start(self, states) -> None:
        self._report(states, now_anyway=True, every_task=True)

    def on_progress(self, states) -> None:
        self._report(states)

    def on_finish(self, states) -> None:
        self._report(states, now_anyway=True)
