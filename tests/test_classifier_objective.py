"""The robust classifier objective (Kawar, Ganz & Elad 2023, Eq. 5): the loss is taken on the
attacked batch x~_t, samples the model already gets wrong are not attacked (early stopping),
and the vanilla objective is plain cross-entropy on x_t."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.attacks import default_step_size
from engine.classifier_objective import AttackSettings, classifier_loss


class Linear(torch.nn.Module):
    """f(x, t) = W x + b, the same at every t."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(3, 6) * 3.0)
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x, t):
        return x.flatten(1) @ self.weight.T + self.bias


def batch():
    x_t = torch.zeros(4, 1, 2, 3)
    x_t.view(4, -1)[torch.arange(4), torch.tensor([0, 1, 2, 0])] = 1.0  # rows 0-2 point at their class
    y = torch.tensor([0, 1, 2, 1])  # row 3 is misclassified from the start
    return x_t, torch.zeros(4, dtype=torch.long), y


def test_the_robust_loss_is_taken_on_the_attacked_batch():
    model = Linear()
    x_t, t, y = batch()
    vanilla = classifier_loss(model, x_t, t, y)
    torch.testing.assert_close(vanilla.loss, F.cross_entropy(model(x_t, t), y))
    assert vanilla.attack is None and vanilla.inputs is x_t
    # a budget that always flips the prediction: the attack succeeds, so the loss must change
    robust = classifier_loss(model, x_t, t, y, AttackSettings("l2", eps=3.0, steps=5))
    assert robust.attack.initial_pred.tolist() == [0, 1, 2, 0]
    assert (robust.logits.argmax(-1) != y).all()  # every sample misclassified after the attack
    torch.testing.assert_close(robust.loss, F.cross_entropy(model(robust.inputs, t), y))
    torch.testing.assert_close(robust.logits, model(robust.inputs, t))
    assert float(robust.loss.detach()) > float(vanilla.loss.detach()) + 0.5
    # early stopping: the misclassified sample is not attacked; the others move within the ball
    assert torch.equal(robust.inputs[3], x_t[3]) and int(robust.attack.steps_used[3]) == 0
    moved = (robust.inputs - x_t).flatten(1).norm(dim=1)
    assert (moved[:3] > 0.1).all() and (moved <= 3.0 + 1e-5).all()
    # the loss back-propagates to the weights through train_forward, not through the attack
    calls = []

    def train_forward(x, t):
        calls.append(x)
        return model(x, t)

    again = classifier_loss(model, x_t, t, y, AttackSettings("l2", eps=3.0, steps=5), train_forward=train_forward)
    assert len(calls) == 1 and torch.equal(calls[0], again.inputs)
    again.loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_attack_settings_use_the_engine_step_size_rule():
    assert AttackSettings("l2", eps=1.0, steps=4).resolved_step_size == default_step_size(1.0, 4) == 0.625
    assert AttackSettings("linf", eps=0.1, steps=2, step_size=0.01).resolved_step_size == 0.01
    with pytest.raises(ValueError, match="positive"):
        AttackSettings("l2", eps=0.0)
    with pytest.raises(ValueError, match="norm"):
        AttackSettings("l1")
