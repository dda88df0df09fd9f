"""Consistent vs plain save at 1% dirty, 256 MiB, with/without a native writer (median of 3)."""

import statistics, sys, tempfile, numpy as np, ntshim
from ntshim import _bench
from ntshim.snapshot import Checkpointer

PS = 4096
size = 256 << 20
pages = size // PS
backend = sys.argv[1] if len(sys.argv) > 1 else None
region = ntshim.alloc(size)
a = np.frombuffer(region, np.uint8)
a[::PS] = 1
rng = np.random.default_rng(1)
with tempfile.TemporaryDirectory(dir="/var/tmp") as d, Checkpointer(d, {"m": region}, backend=backend) as c:
    print("backend", c.backends)
    c.save()
    for writer in (False, True):
        w = (
            _bench.Writers(memoryview(region)[: pages // 100 * PS], 1, random=True) if writer else None
        )  # the writer's 1%
        for consistent in (False, True):
            t = []
            f = []
            for _ in range(3):
                if not writer:
                    a[rng.choice(pages, pages // 100, replace=False) * PS] += 1
                info = c.save(consistent=consistent)
                t.append(info.seconds)
                f.append((info.pages, info.faulted))
            print(
                f"writer={writer!s:5} consistent={consistent!s:5} median {statistics.median(t) * 1e3:7.1f} ms  runs {[round(x * 1e3, 1) for x in t]} pages/faulted {f}"
            )
        if w:
            print("writer writes", w.stop()[0])
    del a
