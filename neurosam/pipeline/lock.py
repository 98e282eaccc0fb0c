"""One run per work dir.

A run holds ``work_dir/run.lock`` (an flock) for as long as it runs, and writes there who it is:
host, pid, start time. A second run is refused at once and told who holds it. The kernel drops
an flock when its process dies, so a run killed outright leaves a lock that is free but still
names it: the next run takes it over with a warning. A run that ends, however it ends, empties
the file.

``work_dir/configs.json`` records, for every config file run in the work dir, what it writes
(output datasets and work-dir files) and by which task. A config that would write what another
known config writes with other parameters is refused before any block: the two would overwrite
each other's results. Configs whose file is gone are forgotten.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from neurosam.layout import RunPlan, configs_path, lock_path
from neurosam.pipeline.registry import stages_for
from neurosam.stages.stage import InputError

logger = logging.getLogger(__name__)


class WorkDirLock:
    """Held from ``acquire`` to ``release``; the file descriptor is not inherited by workers."""

    def __init__(self, work_dir: Path):
        self.path = lock_path(work_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(
                f"work dir {self.path.parent} is in use by the run of {holder}: wait for it to end, or stop it "
                "(Ctrl-C or kill, which it answers by stopping its workers)"
            ) from None
        if os.fstat(fd).st_size:
            logger.warning("taking over %s from the run of %s, which ended without releasing it", self.path, _holder(fd))
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"{holder['host']}, pid {holder['pid']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "a run that left no name"


def _writes(plan: RunPlan) -> dict[str, str]:
    """Everything the run writes, by path: the task that writes it."""
    writes = {}
    for stage in stages_for(plan.config):
        task_id = plan.task_of_stage(stage.name).task_id
        for output in stage.outputs(plan):
            writes[str(Path(output.path).resolve())] = task_id
        for path in stage.work_files(plan):
            writes[str(Path(path).resolve())] = task_id
    return writes


def claim_outputs(plan: RunPlan, config_path: str) -> None:
    """Refuse a config whose outputs another config known to the work dir writes with other
    parameters (another task id); else record this one's."""
    path = configs_path(plan.work_dir)
    known = json.loads(path.read_text()) if path.exists() else {}
    known = {other: writes for other, writes in known.items() if Path(other).exists()}
    ours = _writes(plan)
    for other, writes in known.items():
        if other == config_path:
            continue
        for written, task_id in ours.items():
            if writes.get(written, task_id) != task_id:
                raise InputError(
                    f"{config_path} would write {written}, which {other} (run in this work dir before) writes with "
                    f"other parameters; give each config its own work dir and output datasets, or delete {other}"
                )
    known[config_path] = ours
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(known, indent=1))
    partial.replace(path)
