"""Models: the teacher/student registry and the FeatureModel contract (features, logits)."""

# Importing the model modules registers their entries (featcache.models.registry is always imported through here).
from featcache.models import students, timm_models  # noqa: F401 - timm_models registers timm:NAME (timm imported lazily)
from featcache.models.base import FeatureModel
from featcache.models.teachers import Teacher, WeightsInfo, create_teacher, list_teachers, resolve_weights

__all__ = ["FeatureModel", "Teacher", "WeightsInfo", "create_teacher", "list_teachers", "resolve_weights"]
