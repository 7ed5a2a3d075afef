"""What a report says about where it ran: the machine, the code version, the
load, and which core each side was pinned to."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BenchmarkError

BENCH_CORE = 0
BROKER_CORE = 1


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    memory_gib: float
    python: str

    def describe(self) -> str:
        return (f"{self.cpus} CPUs ({self.cpu_model}), {self.memory_gib:.1f} GiB RAM, "
                f"Python {self.python}")


def describe_machine() -> Machine:
    """Read before pinning: `os.cpu_count()` is the machine, not our affinity."""
    return Machine(
        cpus=os.cpu_count() or 1,
        cpu_model=_cpu_model(),
        memory_gib=_memory_gib(),
        python=platform.python_version(),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. `0.52 0.31 0.20`."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_times() -> tuple[int, ...]:
    """The machine's CPU time so far, from the ``cpu`` line of /proc/stat
    (user, nice, system, idle, iowait, irq, softirq, steal, in clock ticks);
    empty where /proc/stat cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return ()
    if not fields or fields[0] != "cpu":
        return ()
    return tuple(int(x) for x in fields[1:9])


def cpu_steal(before: tuple[int, ...], after: tuple[int, ...] | None = None) -> str:
    """How much of the machine's CPU time between two ``cpu_times()`` the
    hypervisor gave to other guests (steal), and how busy this machine was:
    a run on a host that steals a third of the time is not comparable with
    one on a quiet host, whatever the load average says."""
    after = cpu_times() if after is None else after
    if len(before) < 8 or len(after) < 8:
        return "not known (no /proc/stat)"
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    if total <= 0:
        return "not known (no CPU time elapsed)"
    idle = delta[3] + delta[4]
    steal = delta[7]
    return (f"{100 * steal / total:.1f} % stolen by the host; busy "
            f"{100 * (total - idle - steal) / total:.1f} %, idle {100 * idle / total:.1f} % "
            "(all cores, over the run)")


def git_commit(repo: Path) -> str:
    """`git rev-parse --short HEAD`, plus `-dirty` if anything (untracked
    files included) differs from it; `unknown` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, check=True,
                                capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if status else head


def can_pin() -> bool:
    """Pinning needs both cores available to us and `taskset`."""
    return {BENCH_CORE, BROKER_CORE} <= os.sched_getaffinity(0) and bool(shutil.which("taskset"))


def pin_pid_threads(pid: int, core: int) -> None:
    """Pin every thread of another process (e.g. the broker's JVM) to `core`;
    threads it starts later inherit the mask of the thread that starts them."""
    result = subprocess.run(["taskset", "-a", "-cp", str(core), str(pid)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"taskset could not pin pid {pid} to core {core}: "
                             f"{result.stderr.strip()}")


def pin_self(core: int) -> None:
    """Pin every thread of this process to `core` (clients started later,
    and their threads, inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    os.sched_setaffinity(0, {core})
