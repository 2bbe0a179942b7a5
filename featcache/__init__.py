"""featcache: run a teacher once, cache its features, distil many students from the cache.

Data flows one way: dataset -> teacher -> shards -> joined loader -> student -> metrics.
The library is usable without the CLI; see README.md for the tour.
"""

__version__ = "0.1.0"
