"""One torchdistill run of `featcache bench peers`, in its own process: ``python -m featcache.bench.peers.tdrun
SPEC.json``. torchdistill (the ``featcache[peers]`` extra, pinned to 1.1.4, the last release with ``cache_output``)
is imported here only, so featcache itself never depends on it.

The run is torchdistill's own example (examples/torchvision/image_classification.py of 1.1.4) for the bench's task:
the same ``get_distillation_box`` with a configuration equal to its YAML (``WeightedSumLoss`` of one ``KDLoss``,
Adam, ``CosineAnnealingLR`` stepped per epoch, ``RandomSampler``, ``cache_output:`` for the cached arms), the same
``train_one_epoch`` step (``forward_process``, ``post_forward_process``) and a test-split evaluation after every
epoch. Two changes, both said in docs/comparison.md: the teacher is put in eval mode (the example never does, so its
batch norms would use each batch's statistics and move their running averages), so every arm learns from the same
teacher outputs; and with ``channels_last`` the two models and each input batch use that memory layout (featcache's
default on the CPU; torchdistill has no option for it). torchdistill unpickles its cache files (a full
``torch.load``, not weights-only) in this process; featcache's process only reads the student's state dict
written here, weights-only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # featcache's normalisation of the same images (TransformSpec's default)
IMAGENET_STD = [0.229, 0.224, 0.225]


def train_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``train:`` section of torchdistill's YAML for the bench's task, as the dict its loader makes of it."""
    import torch

    loader: dict[str, Any] = {
        "dataset_id": "train",
        "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": None},
        "kwargs": {"batch_size": spec["batch_size"], "num_workers": 0, "pin_memory": False, "drop_last": False},
    }
    if spec.get("cache_dir"):
        loader["cache_output"] = spec["cache_dir"]
    kd = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
          "teacher_module_io": "output", "temperature": spec["temperature"], "alpha": spec["alpha"],
          "reduction": "batchmean"}
    return {
        "num_epochs": spec["epochs"],
        "train_data_loader": loader,
        "val_data_loader": {"dataset_id": "test",
                            "sampler": {"class_or_func": torch.utils.data.SequentialSampler, "kwargs": None},
                            "kwargs": {"batch_size": spec["batch_size"], "num_workers": 0, "drop_last": False}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                    "frozen_modules": []},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "Adam", "kwargs": {"lr": spec["lr"]}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": spec["epochs"]}, "scheduling_step": 0},
        "criterion": {"key": "WeightedSumLoss",
                      "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
    }


def datasets(spec: dict[str, Any], augment: bool = False) -> dict[str, Any]:
    import torchvision
    from torchvision import transforms as T

    steps = [T.RandomCrop(spec["image_size"], padding=spec["image_size"] // 8), T.RandomHorizontalFlip()] \
        if augment else []
    tf = T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    plain = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    root = Path(spec["data_root"])
    return {"train": torchvision.datasets.ImageFolder(str(root / "train"), transform=tf),
            "test": torchvision.datasets.ImageFolder(str(root / "test"), transform=plain)}


def models(spec: dict[str, Any]):
    import torch
    import torchvision

    teacher = torchvision.models.resnet18(num_classes=spec["num_classes"])
    teacher.load_state_dict(torch.load(spec["teacher_weights"], map_location="cpu", weights_only=True))
    teacher.eval()  # the example leaves it in training mode (module docstring)
    torch.manual_seed(spec["seed"])
    student = torchvision.models.mobilenet_v3_small(num_classes=spec["num_classes"])
    if spec["channels_last"]:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    return teacher, student


def evaluate(student, loader, channels_last: bool) -> float:
    """The example's per-epoch validation: eval mode, top-1 on the test split."""
    import torch

    student.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            correct += int((student(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(1, total)


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train the student as torchdistill's example does; the timings of each part and the final weights."""
    import torch
    from torchdistill.common.main_util import set_seed
    from torchdistill.core.distillation import get_distillation_box

    started = time.perf_counter()
    set_seed(spec["seed"])
    teacher, student = models(spec)
    box = get_distillation_box(teacher, student, datasets(spec), train_config(spec), torch.device("cpu"), None,
                               False, 1)
    epochs: list[dict[str, float]] = []
    cl = spec["channels_last"]
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        t0 = time.perf_counter()
        images = 0
        for sample_batch, targets, supp_dict in box.train_data_loader:
            if cl:
                sample_batch = sample_batch.contiguous(memory_format=torch.channels_last)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            images += len(targets)
            if not torch.isfinite(loss):
                raise ValueError(f"the training loop was broken due to loss = {loss}")
        t1 = time.perf_counter()
        acc = evaluate(student, box.val_data_loader, cl)
        box.post_epoch_process()
        epochs.append({"train_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1, "images": images,
                       "test_acc": acc})
    box.clean_modules()
    torch.save({k: v.contiguous() for k, v in student.state_dict().items()}, spec["student_out"])
    return {"setup_and_run_seconds": time.perf_counter() - started, "epochs": epochs}


def view_check(spec: dict[str, Any]) -> dict[str, Any]:
    """What torchdistill's cache gives the student in epoch 2 under random crop + flip: the box's teacher output
    for each sample (read from the cache written in epoch 1) next to the teacher run on the pixels the student
    receives in that step, per sample."""
    import torch
    from torchdistill.common.main_util import set_seed
    from torchdistill.core.distillation import get_distillation_box

    set_seed(spec["seed"])
    teacher, student = models(spec)
    box = get_distillation_box(teacher, student, datasets(spec, augment=True), train_config(spec),
                               torch.device("cpu"), None, False, 1)
    first: dict[str, torch.Tensor] = {}
    rows = []
    for epoch in (0, 1):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            outputs, _ = box.get_teacher_output(sample_batch=sample_batch, targets=targets, supp_dict=supp_dict)
            if epoch == 0:
                first.update(zip(supp_dict["cache_file_path"], outputs.detach().float(), strict=True))
                continue
            with torch.no_grad():
                seen = teacher(sample_batch).float()
            for path, got, truth in zip(supp_dict["cache_file_path"], outputs.float(), seen, strict=True):
                rows.append({"max_abs_diff": float((got - truth).abs().max()),
                             "top1_agrees": bool(got.argmax() == truth.argmax()),
                             "same_as_epoch1": bool(torch.equal(got, first[path]))})
        box.post_epoch_process()
    return {"samples": rows}


def main(argv: list[str]) -> int:
    from featcache.util.fileio import read_json, write_text_atomic

    spec = read_json(argv[0])
    import torch

    torch.set_num_threads(spec["threads"])
    result = view_check(spec) if spec.get("mode") == "view-check" else train(spec)
    import resource

    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_text_atomic(Path(spec["result_out"]), json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
