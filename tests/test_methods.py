"""Each method's loss against an independent hand computation (numpy) on a tiny example."""

import numpy as np
import pytest
import torch
from torch import nn

from featcache.config import FitNetsOptions, KDOptions, LossOptions
from featcache.distill.methods import METHODS, MethodParams, TeacherRows, get_method
from featcache.errors import ConfigError
from featcache.models.students import create_student

torch.manual_seed(0)


class ToyStudent(nn.Module):
    """The Student interface with plain linear layers: body (identity on a 4-d input) -> l_T..l_1 -> l0."""

    def __init__(self, dims=(5,), num_classes=3, in_dim=4):
        super().__init__()
        widths = [in_dim, *dims]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.layer_dims = list(dims)
        self.num_features = widths[-1]
        self.num_classes = num_classes

    @property
    def num_levels(self):
        return len(self.layers)

    def level_dim(self, level):
        return self.layer_dims[len(self.layer_dims) - level]

    def forward_all(self, x):
        outs = []
        for layer in self.layers:
            x = torch.relu(layer(x))
            outs.append(x)
        return outs, self.classifier(x)

    def forward_features(self, x):
        return self.forward_all(x)[0][-1]

    def forward_head(self, f):
        return self.classifier(f)

    def head_from(self, level, f):
        for layer in list(self.layers)[len(self.layers) - level + 1 :]:
            f = torch.relu(layer(f))
        return self.classifier(f)

    def forward(self, x):
        return self.forward_all(x)[1]


def np_(t):
    return t.detach().double().numpy()


def np_xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


def np_mse(a, b):
    return ((a - b) ** 2).mean()


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_relu(v):
    return np.maximum(v, 0)


def lin(layer, v):
    return v @ np_(layer.weight).T + np_(layer.bias)


@pytest.fixture()
def batch():
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    return x, y


PARAMS = MethodParams(loss=LossOptions(lambda_xent=0.7, lambda_mse=1.3, lambda_kd=0.9), kd=KDOptions(temperature=3.0))


def test_ce(batch):
    x, y = batch
    s = ToyStudent()
    m = get_method("ce")(s, [], 3, PARAMS)
    loss, parts, _ = m.loss(s, x, y, TeacherRows([], []), 0)
    assert loss.item() == pytest.approx(np_xent(np_(s(x)), y.numpy()), rel=1e-6)
    assert set(parts) == {"xent"}


def test_kd(batch):
    x, y = batch
    s = ToyStudent()
    t1, t2 = torch.randn(6, 3), torch.randn(6, 3)
    m = get_method("kd")(s, [7, 7], 3, PARAMS)
    loss, parts, _ = m.loss(s, x, y, TeacherRows([torch.zeros(6, 7)] * 2, [t1, t2.half()]), 0)
    T = PARAMS.kd.temperature
    logits = np_(s(x))
    target = (np_softmax(np_(t1) / T) + np_softmax(np_(t2.half()) / T)) / 2  # averaged soft targets
    logq = np.log(np_softmax(logits / T))
    kl = (target * (np.log(target) - logq)).sum(1).mean() * T * T
    want = PARAMS.loss.lambda_xent * np_xent(logits, y.numpy()) + PARAMS.loss.lambda_kd * kl
    assert loss.item() == pytest.approx(want, rel=1e-5)
    # Identical student and teacher logits: the soft-target term vanishes.
    _, parts, _ = m.loss(s, x, y, TeacherRows([torch.zeros(6, 7)], [s(x).detach()]), 0)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_ts(batch):
    x, y = batch
    s = ToyStudent(dims=(5,))
    ft = torch.randn(6, 5).half()  # cached fp16 rows
    m = get_method("ts")(s, [5], 3, PARAMS)
    loss, parts, _ = m.loss(s, x, y, TeacherRows([ft], [torch.zeros(6, 3)]), 0)
    g = np_relu(lin(s.layers[0], np_(x)))
    w = PARAMS.loss
    want = w.lambda_mse * np_mse(g, np_(ft)) + w.lambda_xent * np_xent(lin(s.classifier, g), y.numpy())
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert parts["mse"].item() == pytest.approx(np_mse(g, np_(ft)), rel=1e-5)


def test_ts_requires_matching_width():
    with pytest.raises(ConfigError, match="feature layer to match"):
        get_method("ts")(ToyStudent(dims=(5,)), [8], 3, PARAMS)
    assert get_method("ts").student_options([2048], PARAMS) == {"feature_dim": 2048}


def test_ts_translator(batch):
    x, y = batch
    s = ToyStudent(dims=(5,))
    ft = torch.randn(6, 9)
    m = get_method("ts-translator")(s, [9], 3, PARAMS)
    loss, parts, _ = m.loss(s, x, y, TeacherRows([ft], [torch.zeros(6, 3)]), 0)
    f_l1 = np_relu(lin(s.layers[0], np_(x)))
    t = lin(m.trainable[0], np_(ft))
    yy = y.numpy()
    want = PARAMS.loss.lambda_mse * np_mse(t, f_l1) + PARAMS.loss.lambda_xent * (
        np_xent(lin(s.classifier, t), yy) + np_xent(lin(s.classifier, f_l1), yy)
    )
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert set(parts) == {"mse", "xent_translated", "xent"}


def test_multi_matches_eq5(batch):
    x, y = batch
    s = ToyStudent(dims=(6, 5))  # l_2 (6-d) then l_1 (5-d)
    f1, f2 = torch.randn(6, 11), torch.randn(6, 13)
    m = get_method("multi")(s, [11, 13], 3, PARAMS)
    loss, parts, _ = m.loss(s, x, y, TeacherRows([f1, f2], [torch.zeros(6, 3)] * 2), 0)
    yy = y.numpy()
    f_l2 = np_relu(lin(s.layers[0], np_(x)))
    f_l1 = np_relu(lin(s.layers[1], f_l2))
    t1 = lin(m.trainable[0], np_(f1))  # teacher 1 -> l_1 (5-d)
    t2 = lin(m.trainable[1], np_(f2))  # teacher 2 -> l_2 (6-d)
    want = PARAMS.loss.lambda_xent * np_xent(lin(s.classifier, f_l1), yy)
    want += PARAMS.loss.lambda_mse * np_mse(t1, f_l1) + PARAMS.loss.lambda_xent * np_xent(lin(s.classifier, t1), yy)
    want += PARAMS.loss.lambda_mse * np_mse(t2, f_l2) + PARAMS.loss.lambda_xent * np_xent(
        lin(s.classifier, np_relu(lin(s.layers[1], t2))), yy
    )
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert set(parts) == {"xent", "mse_1", "xent_1", "mse_2", "xent_2"}


def test_multi_with_one_teacher_is_eq3(batch):
    x, y = batch
    s = ToyStudent(dims=(5,))
    ft = torch.randn(6, 9)
    multi = get_method("multi")(s, [9], 3, PARAMS)
    single = get_method("ts-translator")(s, [9], 3, PARAMS)
    single.trainable[0].load_state_dict(multi.trainable[0].state_dict())
    rows = TeacherRows([ft], [torch.zeros(6, 3)])
    assert multi.loss(s, x, y, rows, 0)[0].item() == pytest.approx(single.loss(s, x, y, rows, 0)[0].item(), rel=1e-6)


def test_fitnets_two_stages(batch):
    x, y = batch
    s = ToyStudent(dims=(5,))
    ft = torch.randn(6, 8)
    params = MethodParams(loss=LossOptions(lambda_mse=2.0), fitnets=FitNetsOptions(hint_epochs=3))
    m = get_method("fitnets")(s, [8], 3, params)
    assert m.total_epochs(4) == 7
    assert [m.stage(e) for e in range(7)] == ["hint"] * 3 + ["xent"] * 4
    rows = TeacherRows([ft], [torch.zeros(6, 3)])
    f_l1 = np_relu(lin(s.layers[0], np_(x)))
    hint, parts, _ = m.loss(s, x, y, rows, 0)
    assert hint.item() == pytest.approx(2.0 * np_mse(lin(m.trainable[0], f_l1), np_(ft)), rel=1e-5)
    xe, parts, _ = m.loss(s, x, y, rows, 5)
    assert xe.item() == pytest.approx(np_xent(lin(s.classifier, f_l1), y.numpy()), rel=1e-6)
    assert set(parts) == {"xent"}


def test_multi_two_teachers_backprop_into_everything():
    student = create_student("lenet5", 10, levels=2, image_size=32)
    m = get_method("multi")(student, [2048, 64], 10, MethodParams())
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([1, 2, 3, 4])
    rows = TeacherRows([torch.randn(4, 2048).half(), torch.randn(4, 64).half()], [torch.zeros(4, 10)] * 2)
    loss, parts, logits = m.loss(student, x, y, rows, 0)
    loss.backward()
    assert logits.shape == (4, 10) and {"mse_1", "mse_2", "xent_1", "xent_2"} <= set(parts)
    for name, module in [("student", student), ("translators", m.trainable), ("classifier", student.classifier)]:
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_teacher_counts_are_checked():
    with pytest.raises(ConfigError, match="drop --teacher"):
        get_method("ce").check_teachers(1)
    with pytest.raises(ConfigError, match="exactly 1 --teacher"):
        get_method("ts").check_teachers(2)
    with pytest.raises(ConfigError, match="at least 1"):
        get_method("multi").check_teachers(0)
    get_method("multi").check_teachers(3)
    with pytest.raises(ConfigError, match="unknown --method"):
        get_method("magic")
    assert set(METHODS) == {"ce", "kd", "fitnets", "ts", "ts-translator", "multi", "aka"}


def test_methods_doc_covers_every_method_and_equation():
    from pathlib import Path

    from featcache.distill.methods import METHODS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    for name in METHODS:
        assert f"`{name}`" in doc, name
    for cite in ("MT Eq. 1", "TS Eq. 5", "MT Eq. 3", "MT Eq. 5", "TS Eq. 6", "--noise-per-batch", "fixed teacher"):
        assert cite in doc, cite


def test_each_methods_loss_is_the_featcache_losses_composition(batch):
    """The CLI's methods and a user's own loop compute one loss: the method equals fc.losses, bitwise."""
    from featcache import losses

    x, y = batch
    p = PARAMS.loss
    s = ToyStudent(dims=(6, 5))
    f1, f2 = torch.randn(6, 5).half(), torch.randn(6, 13).half()
    rows = TeacherRows([f1, f2], [torch.randn(6, 3), torch.randn(6, 3).half()])
    f_l2, f_l1 = s.forward_all(x)[0]
    z = s.classifier(f_l1)

    def method(name, dims, params=PARAMS, epoch=0):
        m = get_method(name)(s, dims, 3, params)
        m.total_epochs(2)
        loss, parts, _ = m.loss(s, x, y, TeacherRows(rows.features[: len(dims)], rows.logits[: len(dims)]), epoch)
        return m, loss, parts

    _, loss, _ = method("ce", [])
    assert torch.equal(loss, losses.xent(z, y))
    _, loss, parts = method("kd", [5, 13])
    kd = losses.kd(z, rows.logits, PARAMS.kd.temperature)
    assert torch.equal(loss, p.lambda_xent * losses.xent(z, y) + p.lambda_kd * kd) and torch.equal(parts["kd"], kd)
    _, loss, _ = method("ts", [5])
    assert torch.equal(loss, p.lambda_mse * losses.feature_regression(f_l1, f1) + p.lambda_xent * losses.xent(z, y))
    m, loss, _ = method("fitnets", [5])
    assert torch.equal(loss, p.lambda_mse * losses.mse(m.trainable[0](f_l1), f1))
    _, loss, _ = method("fitnets", [5], epoch=3)
    assert torch.equal(loss, losses.xent(z, y))
    m, loss, parts = method("ts-translator", [5])
    t = m.trainable[0](f1)
    terms = {}
    assert torch.equal(loss, losses.translator_loss(f_l1, z, t, s.head_from(1, t), y, p.lambda_mse, p.lambda_xent,
                                                    terms=terms))
    assert parts.keys() == terms.keys()
    m, loss, parts = method("multi", [5, 13])
    t1, t2 = m.trainable[0](f1), m.trainable[1](f2)
    want = losses.multi_teacher(z, [f_l1, f_l2], [t1, t2], [s.head_from(1, t1), s.head_from(2, t2)], y,
                                p.lambda_mse, p.lambda_xent)
    assert torch.equal(loss, want) and set(parts) == {"xent", "mse_1", "xent_1", "mse_2", "xent_2"}
