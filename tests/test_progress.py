"""Progress a person can read: done / total, rate and ETA per task, in pipeline order."""

from __future__ import annotations

import io
from types import SimpleNamespace

from neurosam.pipeline import progress
from neurosam.pipeline.progress import ProgressLog


def state(done: int, total: int, failed: int = 0, processing: int = 1) -> SimpleNamespace:
    return SimpleNamespace(completed_count=done, total_block_count=total, failed_count=failed, processing_count=processing)


def test_progress_lines_give_done_total_rate_and_eta(tmp_path, monkeypatch):
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = ProgressLog(["predict-a", "fragments-b"], tmp_path / "progress.log", echo=False)
    log.on_start({"predict-a": state(0, 40), "fragments-b": state(0, 8, processing=0)})
    log.on_progress({"predict-a": state(10, 40), "fragments-b": state(0, 8, processing=0)})
    log.on_finish({"predict-a": state(40, 40), "fragments-b": state(6, 8, failed=2)})
    lines = (tmp_path / "progress.log").read_text().splitlines()
    assert "predict-a" in lines[0] and "0/40" in lines[0]
    progress_line = next(line for line in lines if "10/40" in line)
    assert "1.00 blocks/s" in progress_line and "ETA 0m30s" in progress_line
    assert lines.index(progress_line) < len(lines) - 2
    assert "40/40" in lines[-2] and "100.0%" in lines[-2]
    assert "fragments-b" in lines[-1] and "6/8" in lines[-1] and "failed 2" in lines[-1]


def test_the_last_lines_are_not_printed_twice(tmp_path, monkeypatch):
    clock = iter([0.0, 10.0, 11.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = ProgressLog(["a", "b"], tmp_path / "progress.log", echo=False)
    log.on_start({"a": state(0, 4), "b": state(0, 4, processing=0)})
    log.on_progress({"a": state(4, 4), "b": state(4, 4)})
    log.on_finish({"a": state(4, 4), "b": state(4, 4)})
    lines = (tmp_path / "progress.log").read_text().splitlines()
    assert sum("4/4" in line for line in lines) == 2


def test_a_resumed_run_starts_at_the_blocks_already_done(tmp_path, monkeypatch):
    """daisy counts the blocks it skips only as it reaches them; the RAG's record counts first,
    and the rate counts only what this run does."""
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = ProgressLog(["a"], tmp_path / "progress.log", echo=False, already_done={"a": set(range(12))})
    log.on_start({"a": state(0, 16)})
    log.on_progress({"a": SimpleNamespace(completed_count=14, skipped_count=12, total_block_count=16, failed_count=0, processing_count=1)})
    log.on_finish({"a": SimpleNamespace(completed_count=16, skipped_count=12, total_block_count=16, failed_count=0, processing_count=0)})
    lines = (tmp_path / "progress.log").read_text().splitlines()
    assert "12/16" in lines[0]
    assert "14/16" in lines[1] and "0.20 blocks/s" in lines[1] and "ETA 0m10s" in lines[1]
    assert "16/16" in lines[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_bar_per_task_and_the_log_plain_lines(tmp_path):
    terminal = Terminal()
    log = ProgressLog(["a", "b"], tmp_path / "progress.log", already_done={"a": {0, 1}}, console=terminal)
    log.on_start({"a": state(0, 4), "b": state(0, 3, processing=0)})
    log.on_progress({"a": state(3, 4), "b": state(0, 3)})
    log.on_finish({"a": state(4, 4), "b": state(2, 3, failed=1)})
    shown = terminal.getvalue()
    assert "\r" in shown and "a: 100%" in shown and "4/4" in shown and "2/3" in shown and "failed 1" in shown
    assert "blocks/s" in shown
    assert "\r" not in (tmp_path / "progress.log").read_text()
