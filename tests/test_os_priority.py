"""Flow runners yield the CPU to requests: every thread of the process gets the lower priority."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_every_thread_is_reniced_and_new_threads_inherit():
    out = run("""
        import os, threading
        from actors.substrate.os_priority import lower_priority
        started, stop = threading.Event(), threading.Event()
        seen = {}
        def early():
            seen["early"] = threading.get_native_id()
            started.set()
            stop.wait()
        threading.Thread(target=early, daemon=True).start()
        started.wait()
        assert lower_priority(10) == 10
        later = threading.Thread(target=lambda: seen.__setitem__("late", os.getpriority(os.PRIO_PROCESS, 0)))
        later.start(); later.join()
        print(os.getpriority(os.PRIO_PROCESS, seen["early"]), seen["late"], os.getpriority(os.PRIO_PROCESS, 0))
    """)
    assert out == "10 10 10"


def test_a_lower_priority_already_set_is_kept():
    out = run("""
        import os
        os.setpriority(os.PRIO_PROCESS, 0, 15)
        from actors.substrate.os_priority import lower_priority
        print(lower_priority(10), lower_priority(0))
    """)
    assert out == "15 15"
