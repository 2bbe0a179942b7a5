"""The implementation of featcache's public API (``import featcache as fc``; docs/python-api.md). Import from
``featcache`` itself: the names below are re-exported there, and the submodules are internal.

    adapters.py   a user's teacher module and Dataset as featcache's: extract_from, wrap_teacher, wrap_dataset
    cache.py      open_cache -> Cache: the typed manifest, rows by index, the student's view
    rows.py       RowJoin and CachedRows: the rows inside a user's loop
    train.py      distill (a registered or an nn.Module student), register_student, register_method, list_*
"""

from featcache.api.adapters import UserDataset, extract_from, state_dict_sha256, wrap_dataset, wrap_teacher
from featcache.api.cache import Cache, open_cache, student_view
from featcache.api.rows import CachedRows, RowIndexError, RowJoin, Rows, TeacherRow
from featcache.api.train import (
    distill,
    list_methods,
    list_students,
    list_teachers,
    register_method,
    register_student,
)

__all__ = ["Cache", "CachedRows", "RowIndexError", "RowJoin", "Rows", "TeacherRow", "UserDataset", "distill",
           "extract_from", "list_methods", "list_students", "list_teachers", "open_cache",
           "register_method", "register_student", "state_dict_sha256", "student_view", "wrap_dataset",
           "wrap_teacher"]
