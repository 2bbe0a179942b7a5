"""featcache.losses: each loss against an independent hand computation (numpy, float64) on small tensors."""

import numpy as np
import pytest
import torch

from featcache import losses
from featcache.errors import ConfigError


def np_(t):
    return t.detach().double().numpy()


def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_xent(logits, y):
    keep = y >= 0
    if not keep.any():
        return 0.0
    return -np_log_softmax(logits)[keep][np.arange(keep.sum()), y[keep]].mean()


def np_kd(s, teachers, T):
    target = np.mean([np.exp(np_log_softmax(t / T)) for t in teachers], axis=0)
    return (target * (np.log(target) - np_log_softmax(s / T))).sum(1).mean() * T * T


def np_mse(a, b):
    return ((a - b) ** 2).mean()


@pytest.fixture()
def gen():
    return torch.Generator().manual_seed(0)


def test_xent_ignores_label_minus_one_and_an_unlabelled_batch_gives_zero(gen):
    logits = torch.randn(5, 4, generator=gen)
    y = torch.tensor([0, -1, 3, 2, -1])
    assert losses.xent(logits, y).item() == pytest.approx(np_xent(np_(logits), y.numpy()), rel=1e-6)
    assert losses.xent(logits.half(), y).dtype == torch.float32  # cached fp16 logits computed in float32
    assert losses.xent(logits, torch.full((5,), -1)).item() == 0.0


def test_mse_and_feature_regression_are_the_per_element_mean(gen):
    a, b = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen).half()
    want = np_mse(np_(a), np_(b))
    assert losses.mse(a, b).item() == pytest.approx(want, rel=1e-6)
    assert losses.feature_regression(a, b).item() == pytest.approx(want, rel=1e-6)


def test_mse_and_feature_regression_refuse_shapes_that_would_broadcast(gen):
    a = torch.randn(3, 7, generator=gen)
    with pytest.raises(ConfigError, match=r"differ in shape, \(3, 7\) and \(1, 7\)") as e:
        losses.mse(a, a[:1])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="translator_loss"):
        losses.feature_regression(a, torch.randn(3, 5))


def test_kd_is_t_squared_kl_to_the_averaged_soft_targets(gen):
    s, t1, t2 = (torch.randn(6, 5, generator=gen) for _ in range(3))
    one = losses.kd(s, t1, temperature=3.0)
    assert one.item() == pytest.approx(np_kd(np_(s), [np_(t1)], 3.0), rel=1e-5)
    assert torch.equal(losses.kd(s, [t1], temperature=3.0), one)
    two = losses.kd(s, [t1, t2.half()], temperature=2.0)  # distributions averaged, not logits
    assert two.item() == pytest.approx(np_kd(np_(s), [np_(t1), np_(t2.half())], 2.0), rel=1e-5)
    assert losses.kd(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_refuses_a_zero_temperature_no_teacher_and_other_classes(gen):
    s = torch.randn(2, 3, generator=gen)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        losses.kd(s, s, temperature=0.0)
    with pytest.raises(ConfigError, match="at least one teacher"):
        losses.kd(s, [])
    with pytest.raises(ConfigError, match=r"teacher logits \(2, 1\) and student logits \(2, 3\) differ in shape"):
        losses.kd(s, [s, s[:, :1]])


def test_translator_loss_is_mt_eq3(gen):
    f_l1, t = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    z_s, z_t = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    y = torch.tensor([0, 2, -1, 1])
    terms = {}
    loss = losses.translator_loss(f_l1, z_s, t, z_t, y, lambda_mse=1.3, lambda_xent=0.7, terms=terms)
    yy = y.numpy()
    want = 1.3 * np_mse(np_(t), np_(f_l1)) + 0.7 * (np_xent(np_(z_t), yy) + np_xent(np_(z_s), yy))
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert terms["xent_translated"].item() == pytest.approx(np_xent(np_(z_t), yy), rel=1e-6)
    assert set(terms) == {"mse", "xent_translated", "xent"} and not terms["mse"].requires_grad


def test_multi_teacher_is_mt_eq5(gen):
    y = torch.tensor([1, 0, 2])
    z_s = torch.randn(3, 3, generator=gen)
    levels = [torch.randn(3, 5, generator=gen), torch.randn(3, 6, generator=gen)]  # f_l1, f_l2
    translated = [torch.randn(3, 5, generator=gen), torch.randn(3, 6, generator=gen)]
    classified = [torch.randn(3, 3, generator=gen), torch.randn(3, 3, generator=gen)]
    terms = {}
    loss = losses.multi_teacher(z_s, levels, translated, classified, y, 1.3, 0.7, terms=terms)
    yy = y.numpy()
    want = 0.7 * np_xent(np_(z_s), yy)
    for f, t, z in zip(levels, translated, classified, strict=True):
        want += 1.3 * np_mse(np_(t), np_(f)) + 0.7 * np_xent(np_(z), yy)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert set(terms) == {"xent", "mse_1", "xent_1", "mse_2", "xent_2"}
    # One teacher: the same value as Eq. 3.
    one = losses.multi_teacher(z_s, levels[:1], translated[:1], classified[:1], y)
    assert one.item() == pytest.approx(losses.translator_loss(levels[0], z_s, translated[0], classified[0], y).item(),
                                       rel=1e-6)
    with pytest.raises(ConfigError, match="one entry per teacher, got 2, 1 and 2"):
        losses.multi_teacher(z_s, levels, translated[:1], classified, y)


def test_prediction_entropy_and_selection_are_aka_eqs_5_and_6():
    confident = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    unsure = torch.tensor([[1.0, 1.0, 1.0], [0.0, 8.0, 0.0]])
    p = np.exp(np_log_softmax(np_(confident)))
    assert losses.prediction_entropy(confident).numpy() == pytest.approx(-(p * np.log(p)).sum(1), rel=1e-4)
    assert losses.select_teachers([confident, unsure]).tolist() == [0, 1]


def test_aka_pieces_are_eqs_2_4_and_7(gen):
    w = torch.randn(4, 6, generator=gen)
    assert losses.aka_regulariser(w).item() == pytest.approx((((np_(w) ** 2).sum(1) - 1) ** 2).mean(), rel=1e-6)
    assert losses.aka_regulariser(torch.nn.functional.normalize(w, dim=1)).item() == pytest.approx(0.0, abs=1e-10)
    a, b = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    assert losses.aka_transfer(a, b).numpy() == pytest.approx(((np_(a) - np_(b)) ** 2).mean(axis=(1, 2, 3)), rel=1e-6)
    assert losses.aka_transfer(a[:, :, 0, 0], b[:, :, 0, 0]).shape == (3,)
    with pytest.raises(ConfigError, match="align both to the same channels"):
        losses.aka_transfer(a, b[:, :3])
    s, t = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    assert losses.aka_soft(s, t, 0.5).numpy() == pytest.approx(((np_(s) - 0.5 * np_(t)) ** 2).mean(1), rel=1e-6)


def test_aka_learns_each_sample_from_its_least_entropy_teacher_per_task(gen):
    b = 4
    transfer = [torch.rand(b, generator=gen) for _ in range(3)]
    reg = [torch.rand((), generator=gen) for _ in range(3)]
    soft = [torch.rand(b, generator=gen) for _ in range(3)]
    logits = [torch.randn(b, 3, generator=gen) * 4 for _ in range(3)]
    tasks = [[0, 1], [2]]  # teachers 0 and 1 cover the same classes; teacher 2 others
    terms = {}
    loss = losses.aka(transfer, reg, soft, logits, tasks, terms=terms)
    ent = np.stack([-(np.exp(np_log_softmax(np_(lg))) * np_log_softmax(np_(lg))).sum(1) for lg in logits[:2]], 1)
    want = 0.0
    for n in range(b):
        for t in (int(ent[n].argmin()), 2):
            want += (np_(transfer[t])[n] + np_(reg[t]) + np_(soft[t])[n]) / b
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert sum(v.item() for v in terms.values()) == pytest.approx(want, rel=1e-6)
    # Without tasks all teachers compete in one task.
    one_task = losses.aka(transfer, reg, soft, logits)
    assert one_task.item() == pytest.approx(losses.aka(transfer, reg, soft, logits, [[0, 1, 2]]).item())
    with pytest.raises(ConfigError, match="one entry per teacher"):
        losses.aka(transfer, reg[:2], soft, logits)


def test_losses_take_only_tensors_and_numbers():
    import inspect

    for name in losses.__all__:
        for p in inspect.signature(getattr(losses, name)).parameters.values():
            assert "Options" not in str(p.annotation) and "Config" not in str(p.annotation), (name, p)


def test_methods_doc_example_of_the_losses_in_your_own_loop_runs():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text(encoding="utf-8")
    section = doc.split("## The losses in your own loop", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    scope = {}
    exec(compile(code, "docs/methods.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and set(scope["terms"]) == {"mse", "xent_translated", "xent"}
    assert all(p.grad is not None for p in scope["translator"].parameters())
    for name in losses.__all__:  # every function is listed in the section
        assert f"`{name}" in section, name
