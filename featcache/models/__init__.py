"""Models: the teacher/student registry and the FeatureModel contract (features, logits)."""

from featcache.models.base import FeatureModel
from featcache.models.teachers import Teacher, WeightsInfo, create_teacher, list_teachers, resolve_weights

__all__ = ["FeatureModel", "Teacher", "WeightsInfo", "create_teacher", "list_teachers", "resolve_weights"]
