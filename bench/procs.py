"""Process helpers: peak RSS from /proc (psutil is not a dependency), topics, temp brokers."""

from __future__ import annotations

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
