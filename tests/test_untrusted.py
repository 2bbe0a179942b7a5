"""The Python API refuses what it cannot mean (to be merged into test_api.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch


# -- 6. the Python API rejects what it cannot mean -------------------------------------------------------------------
@pytest.mark.parametrize("indices, needle", [
    (np.array([0.0, 1.9]), "integers"),
    (torch.tensor([0.5]), "integers"),
    (np.zeros(24, dtype=bool), "boolean mask"),
    (torch.ones(24, dtype=torch.bool), "boolean mask"),
    ([0, 24], "[0, 24)"),
    ([-1], "[0, 24)"),
    (np.array([[0, 1]]), "1-D"),
])
def test_row_join_refuses_indices_it_cannot_mean(syn_cache, indices, needle):
    from featcache import api
    from featcache.errors import FeatcacheError

    join = api.RowJoin([syn_cache.name], check=False)
    with pytest.raises(api.RowIndexError, match=re.escape(needle)) as info:
        join.join(indices)
    assert isinstance(info.value, IndexError) and isinstance(info.value, FeatcacheError)
    # What it can mean still works: any integer dtype, repeats, any order, empty.
    rows = join.join(np.array([5, 0, 5], dtype=np.int32))[0]
    assert np.array_equal(rows["features"][0], rows["features"][2])
    assert len(join.join([])[0]["logits"]) == 0 and len(join.join(torch.tensor([23]))[0]["logits"]) == 1


def test_extract_from_refuses_a_head_narrower_than_the_dataset(home):
    import torchvision
    from torch.utils.data import TensorDataset

    from featcache import api
    from featcache.errors import ConfigError

    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(12) % 4)
    model = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ConfigError, match="2 logits but the dataset has 4 classes"):
        api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool", image_size=32,
                         workers=0)
    with pytest.raises(ConfigError, match="logit_classes"):
        api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool", image_size=32,
                         workers=0, logit_classes=["0", "1", "2"])
    # Saying which classes the head covers (a teacher of some classes) is accepted, and recorded.
    result = api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool",
                              image_size=32, workers=0, logit_classes=["1", "3"])
    assert result.manifest.teacher.classes == ["1", "3"] and result.manifest.teacher.num_classes == 2
