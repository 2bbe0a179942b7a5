"""A user's teacher module and map-style Dataset as featcache's (``extract_from``, ``wrap_teacher``,
``wrap_dataset``).

* :func:`extract_from` runs any ``nn.Module`` (timm-style ``forward_features``/``forward_head``, a named module
  such as torchvision's ``avgpool``, or a callable) over any map-style ``Dataset`` yielding PIL images or uint8
  tensors, into the same cache format and store as ``featcache extract``: the key covers the weights (a hash of the
  state_dict), the feature layer, the transform and the dataset's identity (ids, labels, classes, content), so
  resume, locks, reuse and verify work the same.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from featcache.config import ExtractConfig
from featcache.datasets.base import ImageDataset, check_split
from featcache.errors import ConfigError, DatasetError
from featcache.models.base import FeatureModel
from featcache.models.registry import ModelEntry
from featcache.models.teachers import Teacher, WeightsInfo
from featcache.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformSpec

__all__ = ["ModuleFeatureModel", "UserDataset", "extract_from", "state_dict_sha256", "wrap_dataset",
           "wrap_teacher"]


# -- datasets ----------------------------------------------------------------------------------------------------------


def _to_uint8_chw(image: Any, where: str) -> torch.Tensor:
    """A user's sample image as the uint8 [3, H, W] tensor featcache's transforms take."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        array = np.array(image.convert("RGB"))  # a writable copy
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise DatasetError(f"{where} is a {type(image).__name__}; featcache needs PIL images or uint8 tensors/arrays")
    if image.dtype != torch.uint8:
        raise DatasetError(
            f"{where} is a {image.dtype} tensor; featcache caches the teacher's view of the raw image: give a dataset "
            "that yields PIL images or uint8 tensors (drop ToTensor/Normalize from its transform; featcache applies "
            "the teacher's)")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim == 3 and image.shape[0] not in (1, 3) and image.shape[-1] in (1, 3):
        image = image.permute(2, 0, 1)  # HWC -> CHW
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise DatasetError(f"{where} has shape {tuple(image.shape)}; expected [3, H, W], [H, W, 3] or [H, W]")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


class UserDataset(ImageDataset):
    """A user's map-style ``Dataset`` (``ds[i] -> (image, label, ...)``) seen as one split of an ImageDataset.

    Ids: ``ids`` if given, else the dataset's ``sample_ids``, else the paths of an ImageFolder-style ``samples`` list,
    else the indices. Labels: ``labels``, else ``targets``, else read once from the samples. Content: the files'
    (size, mtime) when the dataset lists its files (``samples``), else a sha256 over every image's pixels (one read
    of the dataset, done once per object) — so a changed image changes the cache key and an old cache is refused.
    """

    def __init__(self, dataset: Dataset, *, name: str, split: str = "train", ids: Sequence[str] | None = None,
                 labels: Sequence[int] | None = None, classes: Sequence[str] | None = None,
                 native_size: int | None = None, version: str = "") -> None:
        self.name = name
        self.native_size = native_size
        self.user = dataset
        n = len(dataset)  # type: ignore[arg-type]  # a map-style Dataset has a length (torch does not declare it)
        files = _listed_files(dataset)
        if ids is None:
            ids = getattr(dataset, "sample_ids", None) or files or [str(i) for i in range(n)]
        if labels is None:
            targets = getattr(dataset, "targets", None)
            labels = list(targets) if targets is not None else [int(dataset[i][1]) for i in range(n)]
        label_array = np.asarray([int(x) for x in labels], dtype=np.int64)
        if classes is None:
            classes = getattr(dataset, "classes", None) or [str(c) for c in range(int(label_array.max()) + 1 if n
                                                                                  else 0)]
        if len(ids) != n or len(label_array) != n:
            raise DatasetError(f"dataset {name!r}: {n} samples but {len(ids)} ids and {len(label_array)} labels")
        if len(set(ids)) != n:
            raise DatasetError(f"dataset {name!r}: sample ids are not unique; pass ids=[...] that name each sample")
        self._files = files
        super().__init__(split=check_split(split), root=None, classes=[str(c) for c in classes],
                         sample_ids=[str(i) for i in ids], targets=label_array,
                         params={"source": "python", "class": type(dataset).__qualname__, "version": version})

    def read_image(self, index: int) -> torch.Tensor:
        return _to_uint8_chw(self.user[index][0], f"sample {index} of dataset {self.name!r}")

    def compute_fingerprint(self) -> str:
        if self._files is not None:
            from featcache.datasets.base import files_fingerprint

            return "files:" + files_fingerprint(self._files)
        h = hashlib.sha256()
        for i in range(len(self)):
            image = self.read_image(i)
            h.update(np.asarray(image.shape, dtype="<i8").tobytes())
            h.update(image.numpy().tobytes())
        return "pixels:" + h.hexdigest()


def _listed_files(dataset: Dataset) -> list[str] | None:
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple) and isinstance(samples[0][0], str):
        return [s[0] for s in samples]
    return None


def wrap_dataset(dataset: Dataset | ImageDataset, *, name: str | None = None, split: str = "train",
                 **kwargs: Any) -> ImageDataset:
    """``dataset`` as an ImageDataset (featcache's own datasets pass through unchanged)."""
    if isinstance(dataset, ImageDataset):
        return dataset
    if not name:
        raise ConfigError("dataset_name: name your dataset (e.g. dataset_name='pets'); it enters the cache key")
    return UserDataset(dataset, name=name, split=split, **kwargs)


# -- teachers ----------------------------------------------------------------------------------------------------------


def state_dict_sha256(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes, values): the weights' part of the cache key."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


DEFAULT_IMAGE_SIZE = 224  # a user's model on photos: the ImageNet evaluation size


class ModuleFeatureModel(FeatureModel):
    """A user's module as a FeatureModel: ``forward(x) -> (features, logits)``, features taken per ``feature_layer``."""

    def __init__(self, model: nn.Module, feature_layer: str | Callable | None, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.default_image_size = image_size
        self.min_image_size = 1
        self._layer = feature_layer
        self._captured: list[torch.Tensor] = []
        if callable(feature_layer) and not isinstance(feature_layer, str):
            self.feature_layer = f"callable {getattr(feature_layer, '__qualname__', 'fn')}"
        elif feature_layer in (None, "timm"):
            if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
                raise ConfigError("feature_layer: this module has no forward_features/forward_head (timm's split); "
                                  "name a module (e.g. feature_layer='avgpool') or pass a callable")
            self.feature_layer = "pre-logits (forward_head(forward_features(x), pre_logits=True))"
        else:
            try:
                module = model.get_submodule(feature_layer)
            except AttributeError:
                names = ", ".join(n for n, _ in model.named_children())
                raise ConfigError(f"feature_layer {feature_layer!r}: the module has no such submodule; its top-level "
                                  f"modules are: {names}") from None
            module.register_forward_hook(lambda _m, _i, out: self._captured.append(out))
            self.feature_layer = f"output of {feature_layer}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer, model = self._layer, self.model
        if callable(layer) and not isinstance(layer, str):
            features, logits = layer(model, x)
        elif layer in (None, "timm"):
            model_: Any = model  # timm's split: methods that nn.Module does not declare
            body = model_.forward_features(x)
            features = model_.forward_head(body, pre_logits=True)
            classifier = model_.get_classifier() if hasattr(model_, "get_classifier") else None
            logits = classifier(features) if classifier is not None else model_.forward_head(body)
        else:
            self._captured.clear()
            logits = self.model(x)
            features = self._captured[-1]
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return torch.flatten(features, 1), logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]


def wrap_teacher(model: nn.Module, *, name: str, feature_layer: str | Callable | None = None,
                 image_size: int = DEFAULT_IMAGE_SIZE, crop_fraction: float = 0.875, resize_mode: str = "shorter",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation: str = "bilinear", classes: Sequence[str] | None = None) -> Teacher:
    """``model`` as a featcache teacher. ``feature_layer``: None/"timm" (timm's pre-logits), a module name whose output
    is the feature (torchvision: ``"avgpool"``), or ``fn(model, x) -> (features, logits)``."""
    if not name or ":" in name or "/" in name:
        raise ConfigError(f"name {name!r}: give the teacher a short name without ':' or '/' (it starts the cache key)")
    model = model.eval()
    wrapped = ModuleFeatureModel(model, feature_layer, image_size).eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        features, logits = wrapped(torch.zeros(1, 3, image_size, image_size, device=device))
    wrapped.num_features = int(features.shape[1])
    wrapped.num_classes = int(logits.shape[1])
    entry = ModelEntry(name=name, builder=lambda **_: wrapped, kind="teacher", default_image_size=image_size,
                       min_image_size=1, crop_fraction=crop_fraction, resize_mode=resize_mode,
                       description=f"python module {type(model).__qualname__}", mean=tuple(mean), std=tuple(std),
                       interpolation=interpolation)
    weights = WeightsInfo(source="module", ref=type(model).__qualname__, sha256=state_dict_sha256(model),
                          classes=tuple(classes) if classes else None)
    return Teacher(name=name, model=wrapped, weights=weights, entry=entry, feature_layer=wrapped.feature_layer,
                   classes=tuple(classes) if classes and len(classes) == wrapped.num_classes else None)


# -- extract -----------------------------------------------------------------------------------------------------------


def extract_from(model: nn.Module | Teacher, dataset: Dataset | ImageDataset, *, name: str | None = None,
                 dataset_name: str | None = None, split: str = "train", ids: Sequence[str] | None = None,
                 labels: Sequence[int] | None = None, classes: Sequence[str] | None = None,
                 feature_layer: str | Callable | None = None, image_size: int | None = None,
                 transform: TransformSpec | None = None, cache_dir: str | Path | None = None, reporter=None,
                 logit_classes: Sequence[str] | None = None, **options: Any):
    """Run ``model`` once over ``dataset`` and cache its features and logits (the CLI's cache format and store).

    ``options`` are ExtractConfig fields (dtype, batch_size, device, precision, workers, shard_rows, noise, views,
    topk_logits, force, ...). ``image_size`` defaults to the images' own size when they share one square size (a
    ``native_size`` dataset: CIFAR, a folder of 32 x 32 images), which then reach the model as they are, else 224.
    ``transform`` defaults to the teacher's view at ``image_size`` (resize + centre crop, or a whole-image resize
    for a ``native_size`` dataset). ``logit_classes``: the classes the model's logits cover,
    in order, when they are not the dataset's (a teacher of some of its classes, as in amalgamation); a model with
    fewer logits than the dataset has classes is refused without it. Returns the ExtractResult (``.key``)."""
    from featcache.extract import extract

    data = wrap_dataset(dataset, name=dataset_name, split=split, ids=ids, labels=labels, classes=classes)
    size = transform.image_size if transform is not None else image_size or data.square_size or DEFAULT_IMAGE_SIZE
    if isinstance(model, Teacher):
        teacher = model
    else:
        if name is None:
            raise ConfigError("name: name the teacher (e.g. name='my-vit'); it starts the cache key")
        teacher = wrap_teacher(model, name=name, feature_layer=feature_layer, image_size=size,
                               classes=list(logit_classes) if logit_classes is not None else data.classes)
    _check_logits(teacher, data, logit_classes)
    unknown = sorted(set(options) - {f for f in ExtractConfig.__dataclass_fields__} - {"teacher", "dataset"})
    if unknown:
        raise ConfigError(f"extract_from: unknown option {unknown[0]!r}; the options are ExtractConfig's fields")
    config = ExtractConfig(teacher=teacher.name, dataset=data.name, split=data.split, image_size=size,
                           cache_dir=Path(cache_dir) if cache_dir else None, **options)
    command = (f"python: featcache.api.extract_from({type(getattr(teacher.model, 'model', teacher.model)).__qualname__}"
               f", <{type(getattr(data, 'user', data)).__qualname__}>, name={teacher.name!r}, "
               f"dataset_name={data.name!r}, split={data.split!r})")
    return extract(config, reporter, dataset=data, teacher=teacher, transform=transform, command=command)


def _check_logits(teacher: Teacher, data: ImageDataset, logit_classes: Sequence[str] | None) -> None:
    """A head narrower than the dataset cannot score its classes: refused unless the caller says which it covers."""
    n = int(teacher.num_classes)
    if logit_classes is not None:
        outside = [c for c in logit_classes if c not in data.classes]
        if len(logit_classes) != n or outside:
            raise ConfigError(f"logit_classes: {len(logit_classes)} names for a model with {n} logits"
                              + (f"; {outside[0]!r} is not a class of the dataset" if outside else ""))
        return
    if n < data.num_classes:
        raise ConfigError(f"model: it gives {n} logits but the dataset has {data.num_classes} classes; give the "
                          "model a head over the dataset's classes, or pass logit_classes=[...] naming the classes "
                          "its logits cover")
