"""Progress a person can read: blocks done / total, rate and ETA per task, in pipeline order.

On a terminal, one tqdm bar per task. In a log file, under SLURM or through a pipe, plain lines
every few seconds for the tasks that moved (bars would garble them); progress.log always gets
the plain lines. Blocks an earlier run finished count as done from the first line, and the rate
counts only the blocks this run does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLog:
    """A daisy progress observer (on_start / on_progress / on_finish).

    ``already_done``: per task id, the blocks the RAG records as done. daisy skips them, but
    counts them only as it reaches them, so a resumed run would start at 0 without it."""

    def __init__(
        self,
        task_order: list[str],
        log_path: Path,
        interval_seconds: float = 5.0,
        echo: bool = True,
        already_done: dict[str, set[int]] | None = None,
        console=None,
    ):
        self.task_order = task_order
        self.log_path = log_path
        self.interval_seconds = interval_seconds
        self.console = console if console is not None else sys.stdout
        self.echo_lines = echo and not self.console.isatty()
        self.use_bars = echo and self.console.isatty()
        self.already_done = {task_id: len(blocks) for task_id, blocks in (already_done or {}).items()}
        self.started: dict[str, tuple[float, int]] = {}
        self.reported: dict[str, int] = {}
        self.last_report = 0.0
        self.bars: dict[str, tqdm] = {}
        self.spans: dict[str, list[float]] = {}
        self.ended: set[str] = set()

    def task_seconds(self) -> dict[str, float]:
        """Per task, from its first block seen in progress to its last one done (wall time)."""
        return {task_id: round(end - start, 2) for task_id, (start, end) in self.spans.items()}

    def _time_tasks(self, states, now: float) -> None:
        for task_id, state in states.items():
            if task_id not in self.spans:
                if state.processing_count or state.completed_count > getattr(state, "skipped_count", 0):
                    self.spans[task_id] = [now, now]
                continue
            if task_id not in self.ended:
                self.spans[task_id][1] = now
                if state.completed_count + state.failed_count >= state.total_block_count:
                    self.ended.add(task_id)

    def _counts(self, task_id: str, state) -> tuple[int, int, int]:
        """(done, total, done by this run)."""
        new = state.completed_count - getattr(state, "skipped_count", 0)
        total = state.total_block_count
        return min(total, self.already_done.get(task_id, 0) + new), total, new

    def _line(self, task_id: str, state, now: float) -> str:
        done, total, new = self._counts(task_id, state)
        line = f"{task_id:<24} {done:>7}/{total:<7} ({100.0 * done / max(total, 1):5.1f}%)"
        if state.failed_count:
            line += f" failed {state.failed_count}"
        if task_id not in self.started and (new or state.processing_count):
            self.started[task_id] = (now, new)
        if task_id in self.started and done < total:
            start_time, start_new = self.started[task_id]
            rate = (new - start_new) / max(now - start_time, 1e-9)
            if rate > 0:
                line += f"  {rate:6.2f} blocks/s  ETA {_duration((total - done) / rate)}"
        return line

    def _write_log(self, text: str) -> None:
        """Best effort: a full disk must not stop the run that reports it."""
        try:
            with self.log_path.open("a") as log:
                log.write(text)
        except OSError:
            pass

    def _report(self, states, now_anyway: bool = False, every_task: bool = False) -> None:
        """Tasks whose count moved since their last line (every task at the start), at most
        every ``interval_seconds`` unless ``now_anyway``."""
        self._update_bars(states)
        now = time.monotonic()
        self._time_tasks(states, now)
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
        self._write_log(text)
        if self.echo_lines:
            print(text, end="", file=self.console, flush=True)

    def _update_bars(self, states) -> None:
        if not self.use_bars:
            return
        for position, task_id in enumerate(t for t in self.task_order if t in states):
            done, total, _ = self._counts(task_id, states[task_id])
            bar = self.bars.get(task_id)
            if bar is None:
                bar = self.bars[task_id] = tqdm(
                    total=total, initial=done, desc=task_id, unit="blocks", position=position,
                    file=self.console, dynamic_ncols=True, leave=True,
                )
            if states[task_id].failed_count:
                bar.set_postfix_str(f"failed {states[task_id].failed_count}", refresh=False)
            bar.update(done - bar.n)

    def on_start(self, states) -> None:
        self._report(states, now_anyway=True, every_task=True)

    def on_progress(self, states) -> None:
        self._report(states)

    def on_finish(self, states) -> None:
        self._report(states, now_anyway=True)
        for bar in self.bars.values():
            bar.close()
