"""OS scheduling priority of a background process.

Flows are batch work: a flow runs for seconds, and a few milliseconds more of it matter to no one.
Requests are not: the ingress replica and the shards answer in milliseconds, and on a machine with
few cores a flow's CPU burst (CrewAI, the agents' tools) otherwise takes the cores they need. The
noisy-neighbour bench showed every victim p99 outlier falling on a flow start. A flow runner
therefore runs at a lower priority (a higher niceness) than the processes that answer requests:
when the cores are contended the kernel gives them to requests first, and when they are idle a
flow runs at full speed.

Linux keeps a niceness per thread, and a new thread inherits its creator's, so every thread the
process already has is reniced, not only the calling one.
"""
from __future__ import annotations

import os


def lower_priority(niceness: int) -> int:
    """Raise the niceness of every thread of this process to at least `niceness` (never lower it:
    an unprivileged process could not take it back). Returns the process's niceness after."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread, and what it starts from now on
        threads = [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except (ProcessLookupError, PermissionError):  # the thread ended meanwhile, or is not ours to change
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)
