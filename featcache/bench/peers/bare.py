"""The limit of `featcache bench peers`, in its own process: ``python -m featcache.bench.peers.bare SPEC.json``.

The bench's student step and nothing else: torchvision's mobilenet_v3_small in ``channels_last``, Adam, the KD loss
of the task against fixed teacher logits, on normalised batches already in memory (no decoding, no cache, no
evaluation). Its seconds per epoch bound every arm's training epoch from below, so the speed-up any tool can show over
another is at most the other's epoch time over this one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def bare_epochs(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.manual_seed(spec["seed"])
    n, b, size, classes = spec["images"], spec["batch_size"], spec["image_size"], spec["num_classes"]
    model = torchvision.models.mobilenet_v3_small(num_classes=classes).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    x = torch.randn(n, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (n,))
    t = torch.randn(n, classes)
    T, alpha = spec["temperature"], spec["alpha"]
    epochs = []
    for _ in range(spec["epochs"]):
        order = torch.randperm(n)
        start = time.perf_counter()
        for a in range(0, n, b):
            idx = order[a:a + b]
            out = model(x[idx].contiguous(memory_format=torch.channels_last))
            kd = F.kl_div(F.log_softmax(out / T, 1), F.softmax(t[idx] / T, 1), reduction="batchmean") * T * T
            loss = alpha * F.cross_entropy(out, y[idx]) + (1 - alpha) * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epochs.append(time.perf_counter() - start)
    return {"train_seconds": epochs}


def main(argv: list[str]) -> int:
    from featcache.util.fileio import read_json, write_text_atomic

    spec = read_json(argv[0])
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    result = bare_epochs(spec)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_text_atomic(Path(spec["result_out"]), json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
