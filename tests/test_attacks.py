"""PGD: projection, early stopping exactly on misclassified samples, step-size rule."""

from __future__ import annotations

import pytest
import torch

from engine.attacks import default_step_size, pgd, project, random_start, time_dependent, time_free


class CountingLinear(torch.nn.Module):
    """A linear classifier that records how many rows each forward saw."""

    def __init__(self, d: int = 16, k: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(k, d, generator=g))
        self.rows_seen: list[int] = []

    def forward(self, x):
        self.rows_seen.append(x.shape[0])
        return x.flatten(1) @ self.weight.t()


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("rand", [False, True])
def test_projection_stays_in_ball(batch, norm, rand):
    x, y = batch
    net = CountingLinear()
    res = pgd(time_free(net), x, y, norm=norm, eps=0.3, steps=6, early_stop=False, rand_start=rand,
              generator=torch.Generator().manual_seed(0))
    delta = (res.x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().max(dim=1).values
    assert (size <= 0.3 + 1e-5).all()
    assert (res.steps_used == 6).all()
    project_check = project(torch.full((2, 4), 10.0), norm, 1.0)
    if norm == "l2":
        torch.testing.assert_close(project_check.norm(dim=1), torch.ones(2))
    else:
        assert project_check.abs().max() == 1.0


def test_random_start_inside_ball():
    x = torch.zeros(100, 3, 2, 2)
    d = random_start(x, "l2", 0.5, torch.Generator().manual_seed(0))
    assert (d.flatten(1).norm(dim=1) <= 0.5 + 1e-6).all() and d.abs().sum() > 0


def test_early_stopping_stops_exactly_the_misclassified(batch):
    x, y = batch
    net = CountingLinear()
    with torch.no_grad():
        initially_wrong = net(x).argmax(-1) != y
    net.rows_seen.clear()
    res = pgd(time_free(net), x, y, norm="l2", eps=3.0, steps=5, early_stop=True, final_check=True)
    # already-misclassified samples cost no attack step and are returned unchanged
    assert (res.steps_used[initially_wrong] == 0).all()
    torch.testing.assert_close(res.x_adv[initially_wrong], x[initially_wrong])
    # the first forward evaluates the whole batch; the next only the samples still correct
    assert net.rows_seen[0] == len(y)
    assert net.rows_seen[1] == int((~initially_wrong).sum())
    # a sample that was stepped k < 5 times was misclassified right after its k-th step
    for i in torch.nonzero((res.steps_used > 0) & (res.steps_used < 5))[:, 0].tolist():
        assert res.final_pred[i] != y[i]
    # without early stopping every sample takes every step
    res_all = pgd(time_free(net), x, y, norm="l2", eps=3.0, steps=5, early_stop=False)
    assert (res_all.steps_used == 5).all()
    assert res_all.success.float().mean() >= res.success.float().mean() - 1e-9


def test_early_stop_rows_shrink(batch):
    x, y = batch
    net = CountingLinear()
    pgd(time_free(net), x, y, norm="linf", eps=1.0, steps=4, early_stop=True, final_check=False)
    seen = net.rows_seen
    assert seen[0] == len(y) and all(a >= b for a, b in zip(seen, seen[1:]))


def test_targeted_moves_toward_target(batch):
    x, y = batch
    net = CountingLinear()
    target = (y + 1) % 3
    res = pgd(time_free(net), x, target, norm="l2", eps=5.0, steps=10, targeted=True, early_stop=True)
    assert res.success.float().mean() > 0.9
    with torch.no_grad():
        before = torch.log_softmax(net(x), -1).gather(1, target[:, None])
        after = torch.log_softmax(net(res.x_adv), -1).gather(1, target[:, None])
    assert (after >= before - 1e-6).all()


def test_step_size_rule_and_time_dependent_forward():
    assert default_step_size(0.5, 7) == pytest.approx(2.5 * 0.5 / 7)
    seen = {}

    class TimeNet(torch.nn.Module):
        def forward(self, x, t):
            seen["t"] = t.clone()
            return torch.zeros(x.shape[0], 2) + x.flatten(1).sum(1, keepdim=True) * torch.tensor([1.0, -1.0])

    t = torch.tensor([10, 20, 30])
    forward = time_dependent(TimeNet(), t)
    forward(torch.zeros(2, 1, 1, 1), torch.tensor([0, 2]))
    assert seen["t"].tolist() == [10, 30]


def test_bad_arguments():
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="norm must be"):
        pgd(time_free(CountingLinear(4)), x, y, norm="l1")
