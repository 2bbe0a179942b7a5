"""What `featcache bench peers` measures itself, for every arm the same way: the common evaluation of each run's
final student, and featcache's side of the augmented-view check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featcache.bench.peers.report import view_summary

BN_SAMPLE = 1024  # training images the batch-norm statistics are re-estimated over (distill's --bn-recalibrate)
EVAL_BATCH = 256


class CommonEvaluation:
    """Top-1 on the test images of the bench's folder for any student, after one batch-norm re-estimation: the same
    seeded sample of training images (featcache's ``--bn-recalibrate`` procedure, distill/bn.py), decoded once by
    featcache's folder dataset at the native size and normalised by featcache's Normalizer for every arm."""

    def __init__(self, data_root: Path, seed: int = 0) -> None:
        from featcache.datasets import get_dataset
        from featcache.distill.bn import calibration_images
        from featcache.transforms import Geometry, Normalizer, TransformSpec

        self.device = torch.device("cpu")
        self.train = get_dataset("folder", data_root, "train")
        test = get_dataset("folder", data_root, "test")
        size = int(test.read_image(0).shape[-1])
        self.spec = TransformSpec(image_size=size, resize=size, resize_mode="square")
        self.normalize = Normalizer(self.spec, self.device)
        has_bn = torch.nn.Sequential(torch.nn.BatchNorm2d(1))
        self.calibration = calibration_images(has_bn, self.train, self.spec, BN_SAMPLE, seed, 0, self.device)
        split = test.with_transform(Geometry(self.spec))
        loader = torch.utils.data.DataLoader(split, batch_size=EVAL_BATCH, num_workers=0)
        batches = [(images, labels) for images, labels, _ in loader]
        self.images = torch.cat([b[0] for b in batches])
        self.labels = torch.cat([torch.as_tensor(b[1]) for b in batches])

    def accuracy(self, model: torch.nn.Module) -> float:
        from featcache.distill.bn import recalibrate

        model = model.to(self.device)
        if self.calibration is not None:
            recalibrate(model, self.calibration, self.normalize, 128, self.device, "fp32")
        model.eval()
        correct = 0
        with torch.inference_mode():
            for a in range(0, len(self.images), EVAL_BATCH):
                out = model(self.normalize(self.images[a:a + EVAL_BATCH]))
                logits = out[1] if isinstance(out, tuple) else out
                correct += int((logits.argmax(1) == self.labels[a:a + EVAL_BATCH]).sum())
        return correct / len(self.images)


def torchvision_student(path: Path, num_classes: int) -> torch.nn.Module:
    """A torchdistill run's final student: torchvision's mobilenet_v3_small with the state dict the run wrote,
    read weights-only."""
    import torchvision

    from featcache.models.weights import load_checkpoint

    model = torchvision.models.mobilenet_v3_small(num_classes=num_classes)
    model.load_state_dict(load_checkpoint(path))
    return model


def featcache_student(run_dir: Path) -> torch.nn.Module:
    """A featcache run's final student (its last checkpoint), as `featcache eval` rebuilds it."""
    from featcache.distill.evaluation import load_run

    return load_run(run_dir, "last", "cpu")[0]


def featcache_view_check(store: Path, key: str, data_root: Path, batch_size: int) -> dict[str, Any]:
    """featcache's side of the augmented-view check: the real distill loader over a cache with views, epoch 2's
    batches (the replayed view of each sample and its cached rows) next to the cache's teacher run on those very
    pixels, per sample."""
    from featcache.distill.trainer import DistillConfig, setup, training_parts
    from featcache.models.teachers import teacher_from_manifest
    from featcache.transforms import Normalizer

    config = DistillConfig(student="mobilenetv3_small", small_input=False, teachers=[key], method="kd",
                           dataset="folder", data_root=data_root, cache_dir=store, batch_size=batch_size, epochs=2,
                           workers=0, device="cpu", views=True)
    s = setup(config)
    parts = training_parts(s)
    teacher = teacher_from_manifest(s.caches[0].manifest).model.eval()
    normalize = Normalizer(s.transform, s.device)
    first: dict[int, torch.Tensor] = {}
    rows = []
    for epoch in (0, 1):
        parts.loader.set_epoch(epoch)
        for batch in parts.loader:
            cached = batch.logits[0].float()
            if epoch == 0:
                first.update(zip(batch.index.tolist(), cached, strict=True))
                continue
            with torch.inference_mode():
                seen = teacher.forward_head(teacher.forward_features(normalize(batch.images))).float()
            for i, got, truth in zip(batch.index.tolist(), cached, seen, strict=True):
                rows.append({"max_abs_diff": float((got - truth).abs().max()),
                             "top1_agrees": bool(got.argmax() == truth.argmax()),
                             "same_as_epoch1": bool(torch.equal(got, first[i]))})
    parts.loader.close()
    return view_summary(rows)
