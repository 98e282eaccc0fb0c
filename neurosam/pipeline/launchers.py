"""How the scheduler gets workers: local processes, or SLURM jobs that connect back to it.

daisy runs every distributed worker as its own subprocess. With the local launcher that
subprocess is the worker: it runs the block function in daisy's acquire/release loop. With the
SLURM launcher it is a stand-in that submits one batch job running `neurosam worker` and waits
for it; the job finds the scheduler through DAISY_CONTEXT and pulls blocks itself.

A job never outlives its run: its launcher cancels it when the launcher is interrupted or
terminated, or when the scheduler stops accepting connections (the run aborted or died). The
launchers are daisy's processes, not the orchestrator's, so every job id is also appended to a
file in the work dir: there the orchestrator, or the next run after one killed outright, finds
whatever is left to cancel.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import daisy.v2 as daisy

from neurosam.config import SlurmConfig
from neurosam.layout import RunPlan, TaskLayout, slurm_logs_dir, slurm_pending_file, submitted_jobs_file

#: How often a SLURM launcher checks that its scheduler is still there: the longest a job can
#: outlive an aborted run, against one connection per worker per period to the scheduler.
SCHEDULER_CHECK_SECONDS = 5.0
#: scancel fails while slurmctld is busy or restarting: tried this often, a second apart.
SCANCEL_ATTEMPTS = 5


def make_process_function(plan: RunPlan, plan_file: str, task: TaskLayout) -> Callable:
    """The `process_function` of a daisy task: a worker function (no block argument) that runs
    in its own process and serves blocks. Every worker, local or a SLURM job, is handed the same
    thing: the plan file and its task id."""
    config = plan.config
    if config.workers.launcher == "slurm":
        command = [sys.executable, "-m", "neurosam.cli", "worker", plan_file, "--task", task.task_id]
        return functools.partial(
            run_slurm_worker, command, f"neurosam-{task.task_id}", config.workers.slurm_for(task.stage), config.work_dir
        )
    from neurosam.pipeline.worker_process import serve_task

    return functools.partial(serve_task, plan_file, task.task_id)


def sbatch_command(command: list[str], job_name: str, slurm: SlurmConfig, work_dir: Path) -> list[str]:
    """sbatch --wait: SLURM itself holds the job's exit code, so no accounting database is
    needed to tell a failed worker from a finished one."""
    args = [
        "sbatch",
        "--parsable",
        "--wait",
        f"--job-name={job_name}",
        f"--output={slurm_logs_dir(work_dir) / job_name}-%j.out",
        f"--cpus-per-task={slurm.cpus_per_worker}",
        f"--mem={slurm.memory}",
        f"--time={slurm.time}",
        "--export=ALL",
    ]
    if slurm.partition:
        args.append(f"--partition={slurm.partition}")
    if slurm.gpus_per_worker:
        args.append(f"--gres=gpu:{slurm.gpus_per_worker}")
    return args + list(slurm.extra_args) + ["--wrap", shlex.join(command)]


def run_slurm_worker(command: list[str], job_name: str, slurm: SlurmConfig, work_dir: Path, *, context: daisy.Context) -> None:
    """A daisy worker function: run `command` as one SLURM job that serves blocks to the
    scheduler in `context`, and fail as the job fails.

    A scheduler that refuses connections has ended its run (daisy.Client reads it the same
    way), and an aborted daisy run waits for its workers before it returns: so the job is
    cancelled then, rather than waited for. A job still pending after ``slurm.max_pending``
    seconds is cancelled too, and ends the run (``slurm_pending_file``)."""
    pending = slurm_pending_file(work_dir)
    if pending.exists():
        raise RuntimeError(pending.read_text())
    sbatch, job_id = _submit(command, job_name, slurm, work_dir, context)
    submitted = time.monotonic()
    started = False
    previous_sigterm_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        while not _exited_within(sbatch, SCHEDULER_CHECK_SECONDS):
            if not _scheduler_is_up(context):
                return
            started = started or _job_state(job_id) not in ("PENDING", "")
            if not started and time.monotonic() - submitted > slurm.max_pending:
                message = (
                    f"SLURM job {job_id} ({job_name}) was still pending after {slurm.max_pending:g} s "
                    "(workers.slurm.max_pending): the queue does not start the run's jobs"
                )
                pending.write_text(message)
                raise RuntimeError(message)
    finally:
        if sbatch.poll() is None:
            subprocess.run(["scancel", "--quiet", job_id], check=False)
            sbatch.terminate()
            sbatch.wait()
        signal.signal(signal.SIGTERM, previous_sigterm_handler)
    if sbatch.returncode != 0:
        log = slurm_logs_dir(work_dir) / f"{job_name}-{job_id}.out"
        raise RuntimeError(f"SLURM job {job_id} ({job_name}) failed with exit code {sbatch.returncode}; see {log}")


def _submit(
    command: list[str], job_name: str, slurm: SlurmConfig, work_dir: Path, context: daisy.Context
) -> tuple[subprocess.Popen, str]:
    """Start `sbatch --wait` and record the job's id as soon as SLURM gives it."""
    slurm_logs_dir(work_dir).mkdir(parents=True, exist_ok=True)
    sbatch = subprocess.Popen(
        sbatch_command(command, job_name, slurm, work_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DAISY_CONTEXT": context.to_env()},
        text=True,
        # A Ctrl-C meant for the run must reach the launcher, which cancels the job, and not
        # sbatch, whose death would pass for the job's end.
        start_new_session=True,
    )
    job_id = sbatch.stdout.readline().strip().split(";")[0]
    if not job_id:
        raise RuntimeError(f"sbatch could not submit {job_name}: {sbatch.communicate()[1].strip()}")
    with open(submitted_jobs_file(work_dir), "a") as jobs:
        jobs.write(job_id + "\n")
    return sbatch, job_id


def _job_state(job_id: str) -> str:
    """SLURM's state of the job (PENDING, RUNNING, ...); "" when squeue cannot say."""
    result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _exited_within(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _scheduler_is_up(context: daisy.Context) -> bool:
    """Only a refused connection counts as gone: a slow network is no proof the run ended."""
    try:
        socket.create_connection((context["hostname"], int(context["port"])), timeout=30).close()
    except ConnectionRefusedError:
        return False
    except OSError:
        pass
    return True


def cancel_submitted_jobs(work_dir: Path) -> list[str]:
    """Cancel every job this run's launchers submitted, including those of an earlier run that
    was killed before it could; jobs that already ended are ignored. Returns the ids."""
    jobs_file = submitted_jobs_file(work_dir)
    if not jobs_file.exists():
        return []
    job_ids = sorted(set(jobs_file.read_text().split()))
    for attempt in range(SCANCEL_ATTEMPTS if job_ids else 0):
        if subprocess.run(["scancel", "--quiet", *job_ids], check=False).returncode == 0:
            break
        if attempt == SCANCEL_ATTEMPTS - 1:
            raise RuntimeError(f"scancel {' '.join(job_ids)} failed {SCANCEL_ATTEMPTS} times: cancel them by hand")
        time.sleep(1.0)
    jobs_file.unlink()
    return job_ids
