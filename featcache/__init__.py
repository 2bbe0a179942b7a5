"""featcache: run a teacher once, cache its features, distil many students from the cache.

Data flows one way: dataset -> teacher -> shards -> joined loader -> student -> metrics.
The library is usable without the CLI; see README.md for the tour.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# torch's OpenMP threads spin on the CPU between parallel regions. On a CPU shared with other busy processes (a
# laptop, a 2-core box running two experiments) a spinning thread holds a core its peer needs, and the student's
# steps ran about 10x slower (docs/benchmarks.md, "distill end to end"). Passive waiting changes no result (the same
# threads split the same work); it is read once, when torch loads OpenMP, so it is set before torch is imported.
# An explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "torch" not in _sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & _os.environ.keys():
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
