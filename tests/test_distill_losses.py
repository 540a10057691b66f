"""Distillation loss terms, feature taps and the criterion (pipeline/distill/losses.py, hooks.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from pipeline.distill.hooks import FeatureTap, unwrap_model
from pipeline.distill.losses import (
    DEFAULT_TERMS, ATTerm, DKDTerm, KDTerm, LogitStandardKDTerm, LossBatch, LossTerm, attention_map,
    build_criterion, check_finite, dkd_loss, kd_loss,
)
from pipeline.errors import ConfigError, DataError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared CPU (13 s vs 0.2 s per run)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Net(nn.Module):
    """Small CNN for 1x8x8 digits; ``features.2`` is the first block's ReLU, ``features.5`` the second's."""

    def __init__(self, c1: int, c2: int, stride1: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, stride=stride1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, stride=2), nn.BatchNorm2d(c2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


# ------------------------------------------------------------------------------------------------
# kd
# ------------------------------------------------------------------------------------------------

def test_kd_zero_for_identical_logits_positive_otherwise():
    torch.manual_seed(0)
    s = torch.randn(8, 10)
    assert kd_loss(s, s.clone(), 4.0).abs().item() < 1e-6
    assert kd_loss(s, s + 3.0, 4.0).abs().item() < 1e-5  # a shift does not change the softmax
    assert kd_loss(s, torch.randn(8, 10), 4.0).item() > 1e-3


def test_kd_gradient_matches_manual_formula():
    torch.manual_seed(1)
    n, c, T = 3, 5, 4.0
    s = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, c, dtype=torch.float64)
    loss = KDTerm(T)(LossBatch(student_logits=s, teacher_logits=t))
    loss.backward()
    # d/ds [T^2/N * sum_i KL(p_t || p_s)] = T/N * (softmax(s/T) - softmax(t/T))
    expected = T / n * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1))
    torch.testing.assert_close(s.grad, expected)
    # and the value against the textbook formula
    p_t, p_s = torch.softmax(t / T, 1), torch.softmax(s.detach() / T, 1)
    ref = T**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(loss.detach(), ref)


# ------------------------------------------------------------------------------------------------
# dkd
# ------------------------------------------------------------------------------------------------

def dkd_reference(s, t, y, alpha, beta, T):
    """DKD from the paper's equations, sample by sample (float64), times T^2 as the official code."""
    total = 0.0
    for i in range(s.shape[0]):
        p_s = torch.softmax(s[i] / T, 0)
        p_t = torch.softmax(t[i] / T, 0)
        g = int(y[i])
        b_s = torch.stack([p_s[g], 1 - p_s[g]])
        b_t = torch.stack([p_t[g], 1 - p_t[g]])
        tckd = (b_t * (b_t / b_s).log()).sum()
        others = [j for j in range(s.shape[1]) if j != g]
        q_s = p_s[others] / p_s[others].sum()
        q_t = p_t[others] / p_t[others].sum()
        nckd = (q_t * (q_t / q_s).log()).sum()
        total += alpha * tckd + beta * nckd
    return T**2 * total / s.shape[0]


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)])
def test_dkd_matches_paper_equations(alpha, beta, T):
    torch.manual_seed(2)
    s = torch.randn(6, 7, dtype=torch.float64) * 3
    t = torch.randn(6, 7, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (6,))
    torch.testing.assert_close(dkd_loss(s, t, y, alpha, beta, T), dkd_reference(s, t, y, alpha, beta, T))


def test_dkd_warmup_scaling():
    torch.manual_seed(3)
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    term = DKDTerm(alpha=1.0, beta=8.0, temperature=4.0, warmup=20)
    full = dkd_loss(s, t, y, 1.0, 8.0, 4.0)

    def at(epoch):
        return term(LossBatch(student_logits=s, teacher_logits=t, targets=y, epoch=epoch))

    assert at(0).item() == 0.0
    torch.testing.assert_close(at(10), 0.5 * full)
    torch.testing.assert_close(at(20), full)
    torch.testing.assert_close(at(35), full)
    torch.testing.assert_close(DKDTerm(warmup=0)(LossBatch(s, t, y, epoch=0)), full)


# ------------------------------------------------------------------------------------------------
# kd_ls
# ------------------------------------------------------------------------------------------------

def test_kd_ls_invariant_to_shift_and_positive_scale():
    torch.manual_seed(4)
    s, t = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    term = LogitStandardKDTerm()  # T=2
    base = term(LossBatch(s, t))
    assert base.item() > 1e-3
    torch.testing.assert_close(term(LossBatch(s + 5.0, t)), base)
    torch.testing.assert_close(term(LossBatch(s * 7.5, t)), base)
    # equal up to the 1e-7 the reference implementation adds to the std
    torch.testing.assert_close(term(LossBatch(s * 0.2 - 3.0, t * 4.0 + 1.0)), base, rtol=1e-5, atol=1e-8)
    # plain KD is not scale invariant - the point of standardisation
    assert abs(kd_loss(s * 7.5, t, 2.0).item() - kd_loss(s, t, 2.0).item()) > 1e-2
    # and it is ~0 when the student is an affine copy of the teacher
    assert term(LossBatch(3.0 * t + 2.0, t)).item() < 1e-8


# ------------------------------------------------------------------------------------------------
# fitnet / at
# ------------------------------------------------------------------------------------------------

def test_fitnet_connector_params_are_optimised_and_loss_decreases():
    torch.manual_seed(5)
    student, teacher = Net(4, 8, stride1=2), Net(16, 32)
    x = torch.randn(16, 1, 8, 8)
    crit = build_criterion([{"name": "fitnet", "weight": 1.0, "student_layer": "features.2",
                             "teacher_layer": "features.2"}], student, teacher, x)
    conn = crit.terms[0].connector
    assert isinstance(conn[0], nn.Conv2d) and (conn[0].in_channels, conn[0].out_channels) == (4, 16)
    crit_params = {id(p) for p in crit.parameters()}
    assert crit_params and crit_params == {id(p) for p in conn.parameters()}
    # fixed pair: frozen models in eval mode on one input, only the connector learns
    # (student 4-channel 4x4 maps vs teacher 16-channel 8x8 maps)
    student.eval(), teacher.eval()
    opt = torch.optim.Adam(crit.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        with torch.no_grad():
            t_out, s_out = teacher(x), student(x)
        loss, parts = crit(s_out, t_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert parts["fitnet"] == pytest.approx(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    crit.close()


def test_at_zero_for_identical_and_scale_invariant():
    torch.manual_seed(6)
    f = torch.randn(4, 8, 6, 6)
    g = torch.randn(4, 3, 12, 12)
    term = ATTerm([("s", "t")])  # beta 1000

    def at(fs, ft):
        return term(LossBatch(torch.zeros(4, 10), student_features={"s": fs}, teacher_features={"t": ft}))

    assert at(f, f.clone()).item() < 1e-10
    base = at(g, f)  # different channels and spatial size
    assert base.item() > 1e-3
    torch.testing.assert_close(at(g * 10.0, f), base)
    torch.testing.assert_close(at(g, f * 0.01), base)
    assert attention_map(f).shape == (4, 36)
    torch.testing.assert_close(attention_map(f).norm(dim=1), torch.ones(4))


# ------------------------------------------------------------------------------------------------
# config, criterion, taps
# ------------------------------------------------------------------------------------------------

def test_loss_term_validation_and_defaults():
    assert DEFAULT_TERMS[0].name == "ce" and DEFAULT_TERMS[0].weight == 0.1
    assert DEFAULT_TERMS[1].name == "kd" and DEFAULT_TERMS[1].weight == 0.9 and DEFAULT_TERMS[1].temperature == 4
    assert LossTerm(name="dkd").params() == {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup": 20}
    assert LossTerm(name="kd_ls").params() == {"temperature": 2.0}
    assert LossTerm(name="at", student_layer="a", teacher_layer="b").params()["beta"] == 1000.0
    with pytest.raises(ValidationError):
        LossTerm(name="kd", weight=-1)
    with pytest.raises(ValidationError):
        LossTerm(name="kd", temprature=2)  # extra="forbid" catches typos
    with pytest.raises(ValidationError, match="does not take warmup"):
        LossTerm(name="kd", warmup=5)
    with pytest.raises(ValidationError):
        LossTerm(name="fitnet", student_layer="a")
    with pytest.raises(ValidationError):
        LossTerm(name="at", student_layer=["a", "b"], teacher_layer=["c"])
    with pytest.raises(ValidationError):
        LossTerm(name="nope")
    with pytest.raises(ConfigError, match="bad loss term"):
        build_criterion([{"name": "kd", "T": 4}], Net(4, 8), Net(16, 32))


def test_criterion_parts_sum_to_total_and_close_removes_hooks():
    torch.manual_seed(7)
    student, teacher = Net(4, 8), Net(16, 32)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    terms = [*DEFAULT_TERMS, LossTerm(name="at", weight=1.0, student_layer=["features.2", "features.5"],
                                      teacher_layer=["features.2", "features.5"]),
             LossTerm(name="kd", weight=0.5, temperature=2)]
    crit = build_criterion(terms, student, teacher, x)
    assert list(crit.parameters()) == []  # at has no connector
    with torch.no_grad():
        t_out = teacher(x)
    total, parts = crit(student(x), t_out, y, epoch=1)
    assert list(parts) == ["ce", "kd", "at", "kd_2"]
    assert total.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    total.backward()
    assert student.features[0].weight.grad is not None
    with pytest.raises(ConfigError, match="missing"):  # features are consumed: no stale reuse
        crit(torch.zeros(8, 10), t_out, y)
    assert all(not p.requires_grad or p.grad is None for p in teacher.parameters())
    crit.close()
    crit.close()  # idempotent
    hooks = [m._forward_hooks for m in list(student.modules()) + list(teacher.modules())]
    assert all(len(h) == 0 for h in hooks)


def test_build_criterion_dry_run_keeps_train_mode_and_bn_stats():
    student, teacher = Net(4, 8), Net(16, 32)
    student.train()
    before = student.features[1].running_mean.clone()
    crit = build_criterion([{"name": "fitnet", "student_layer": "features.5", "teacher_layer": "features.5"}],
                           student, teacher, torch.randn(4, 1, 8, 8) + 3)
    assert student.training and student.features[1].training
    torch.testing.assert_close(student.features[1].running_mean, before)
    crit.close()


def test_feature_tap_bad_path_suggests_close_match():
    model = Net(4, 8)
    with pytest.raises(ConfigError) as e:
        FeatureTap(model, ["features.2", "featurs.5"])
    assert "featurs.5" in e.value.message and "features.5" in e.value.hint
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # nothing half-registered
    with pytest.raises(ConfigError) as e:
        build_criterion([{"name": "fitnet", "student_layer": "features.2", "teacher_layer": "fc2"}],
                        model, Net(16, 32), torch.randn(2, 1, 8, 8))
    assert "'fc'" in e.value.hint
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_feature_tap_records_latest_forward_and_removes():
    model = Net(4, 8)
    x1, x2 = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 8, 8)
    with FeatureTap(model, ["features.5", "fc"]) as tap:
        with pytest.raises(ConfigError, match="produced no output"):
            tap["fc"]
        out = model(x1)
        assert tap["fc"] is out
        model(x2)
        assert tap["features.5"].shape == (3, 8, 4, 4)
    assert not tap.active and tap.features == {}
    model(x1)
    assert tap.features == {}


def test_feature_tap_looks_through_data_parallel_and_ddp(tmp_path):
    model = Net(4, 8)
    x = torch.randn(2, 1, 8, 8)
    dp = nn.DataParallel(model)
    with FeatureTap(dp, ["module.features.2", "features.5"]) as tap:
        dp(x)
        assert tap["module.features.2"].shape == (2, 4, 8, 8) and tap["features.5"].shape == (2, 8, 4, 4)
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(ddp) is model
        with FeatureTap(ddp, ["module.features.2", "fc"]) as tap:
            ddp(x)
            assert tap["module.features.2"].shape == (2, 4, 8, 8) and tap["fc"].shape == (2, 10)
        with pytest.raises(ConfigError, match="module.featurs"):
            FeatureTap(ddp, ["module.featurs.2"])
    finally:
        dist.destroy_process_group()


def test_check_finite():
    check_finite(torch.ones(3), "inputs", 0)
    check_finite(torch.tensor([1, 2]), "labels", 0)  # integers are never NaN
    with pytest.raises(DataError, match=r"NaN/Inf in teacher logits at step 7"):
        check_finite(torch.tensor([1.0, math.nan]), "teacher logits", 7)
    with pytest.raises(DataError, match=r"NaN/Inf in inputs at step 3") as e:
        check_finite(torch.tensor([math.inf, -math.inf, 0.0]), "inputs", 3)
    assert "0 NaN and 2 Inf" in e.value.hint


# ------------------------------------------------------------------------------------------------
# end to end: a tiny student learns from a trained teacher on sklearn digits
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_and_teacher():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    teacher = Net(16, 32)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(4):
        for idx in torch.randperm(len(x)).split(128):
            loss = F.cross_entropy(teacher(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    teacher.eval()
    with torch.no_grad():
        acc = (teacher(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9, acc
    return x, y, teacher


@pytest.mark.parametrize("term", [
    {"name": "kd", "weight": 0.9},
    {"name": "dkd", "weight": 1.0, "warmup": 1},
    {"name": "kd_ls", "weight": 9.0},
    {"name": "fitnet", "weight": 10.0, "student_layer": "features.2", "teacher_layer": "features.2"},
    {"name": "at", "weight": 1.0, "student_layer": ["features.2", "features.5"],
     "teacher_layer": ["features.2", "features.5"]},
], ids=lambda t: t["name"])
def test_short_distillation_drives_training_loss_down(digits_and_teacher, term):
    x, y, teacher = digits_and_teacher
    torch.manual_seed(1)
    student = Net(4, 8, stride1=2)
    crit = build_criterion([{"name": "ce", "weight": 0.1}, term], student, teacher, x[:16])
    opt = torch.optim.Adam([*student.parameters(), *crit.parameters()], lr=1e-2)
    student.train(), crit.train()
    history = []
    for epoch in range(1, 5):  # 1-based like mdistiller, so DKD with warmup 1 is at full weight
        totals, term_parts = [], []
        for step, idx in enumerate(torch.randperm(len(x)).split(128)):
            check_finite(x[idx], "inputs", step)
            with torch.no_grad():
                t_out = teacher(x[idx])
            check_finite(t_out, "teacher logits", step)
            loss, parts = crit(student(x[idx]), t_out, y[idx], epoch=epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            totals.append(loss.item())
            term_parts.append(parts[term["name"]])
        history.append((sum(totals) / len(totals), sum(term_parts) / len(term_parts)))
    crit.close()
    (first_total, first_term), (last_total, last_term) = history[0], history[-1]
    assert last_total < 0.8 * first_total, history
    assert last_term < first_term, history
