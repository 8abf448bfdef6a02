"""Freed buffers are reused, not faulted in afresh (coldkeep.heap): counted in page faults, not time."""

from __future__ import annotations

import subprocess
import sys

# Four threads, each keeping a window of six buffers of 64 KiB - 4 MiB (a restore's chunk buffers
# in flight), allocating 1,200 and freeing all but the last six: the minor page faults of that
# loop alone, printed.  The buffers are zero-filled, so every page is touched.
PROBE = """
import collections, resource, sys, threading
if sys.argv[1] == "keep":
    from coldkeep.heap import keep_freed_memory
    assert keep_freed_memory()
SIZES = [(64 << 10) * (1 + (i * 7919) % 64) for i in range(997)]
def work(seed):
    window = collections.deque()
    for i in range(1200):
        window.append(bytes(SIZES[(seed * 31 + i) % len(SIZES)]))
        if len(window) > 6:
            window.popleft()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_keep_freed_memory_stops_the_page_faults_of_short_lived_buffers() -> None:
    default, kept = faults("default"), faults("keep")
    # measured: ~256,000 faults with glibc's defaults (freed buffers go back to the kernel), ~24,000
    # kept (the first touch of the ~100 MB the windows need at most)
    assert default > 100_000, default
    assert kept * 4 < default, (kept, default)
