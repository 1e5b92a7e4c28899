"""Helpers shared by the model-type tests."""

from __future__ import annotations

import torch

from models.registry import model_type_spec
from models.supervision import LossContext, TrainBatch


def adam_losses(model_type: str, net: torch.nn.Module, batch: TrainBatch, ctx: LossContext,
                *, steps: int = 8, lr: float = 1e-3) -> list[float]:
    """The type's training loss over ``steps`` Adam steps on one fixed batch."""
    training = model_type_spec(model_type).training
    assert training is not None
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = training.loss(net, batch, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
