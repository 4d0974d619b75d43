"""Process helpers: peak RSS and CPU from /proc (psutil is not a dependency), topics."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 4  # the default of SLUICE_EVENTS_PARTITIONS


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM (the kernel's high-water mark of resident memory) of ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Restart the VmHWM high-water mark (Linux >= 4.0), so a later read covers one phase."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def new_topic(bootstrap: str, prefix: str, partitions: int = PARTITIONS) -> str:
    """A fresh topic, so each measurement starts on an empty log."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(15)
    return name


def cpu_seconds_by_pid() -> dict[int, float]:
    """user+system CPU seconds of every process now alive (from /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def foreign_cpu_s(before: dict[int, float]) -> float:
    """CPU seconds other processes spent since ``before``: the machine is shared, and a
    figure taken while something else ran is not comparable with a quiet run's.
    Our own children have exited by then; this process is left out."""
    now = cpu_seconds_by_pid()
    now.pop(os.getpid(), None)
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in now.items())


def stop_process(process: subprocess.Popen[bytes], wait_s: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``wait_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, n: int = 2000) -> str:
    return path.read_bytes()[-n:].decode(errors="replace")
