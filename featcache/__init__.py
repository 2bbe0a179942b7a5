"""featcache: run a teacher once, cache its features, distil many students from the cache.

Data flows one way: dataset -> teacher -> shards -> joined loader -> student -> metrics.
The library is usable without the CLI; see README.md for the tour.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# torch's OpenMP threads (libgomp) spin 300,000 times between parallel regions before they sleep. On a CPU shared
# with other busy processes (a laptop, a 2-core box running two experiments) a spinning thread holds the core its
# peer needs, and a student's steps ran up to 13x slower (docs/benchmarks.md, "Distill end to end"). 10,000 spins
# kept an idle box's speed there and ran 1.6-5x faster than the default on a busy one; the spin count changes no
# result (the same threads split the same work). libgomp reads it once, when torch loads it, so it is set before
# torch is imported; an explicit GOMP_SPINCOUNT or OMP_WAIT_POLICY wins (PASSIVE, or GOMP_SPINCOUNT=1000, did better
# still on a busy box).
if "torch" not in _sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & _os.environ.keys():
    _os.environ["GOMP_SPINCOUNT"] = "10000"
