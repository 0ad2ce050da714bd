"""The clients' plain-training optimizer: torch's SGD update without torch's import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from flp2p.models import MomentumSGD, build_model


def _trained(optimizer_of: Callable[[Any], Any], steps: int = 12) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build_model((1, 28, 28), 10)
    rng = np.random.default_rng(0)
    criterion = nn.CrossEntropyLoss()
    optimizer = optimizer_of(model.parameters())
    for _ in range(steps):
        x = torch.from_numpy(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, 16))
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    return [param.detach().clone() for param in model.parameters()]


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_momentum_sgd_is_torch_sgd_bit_for_bit(momentum: float) -> None:
    ours = _trained(lambda params: MomentumSGD(params, lr=0.05, momentum=momentum))
    torch_sgd = _trained(
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=momentum)
    )
    assert all(torch.equal(a, b) for a, b in zip(ours, torch_sgd, strict=True))
    untrained = _trained(lambda params: MomentumSGD(params, lr=0.0, momentum=0.0))
    assert not all(torch.equal(a, b) for a, b in zip(ours, untrained, strict=True))


def test_plain_local_training_does_not_import_torch_dynamo() -> None:
    code = (
        "import sys, numpy as np\n"
        "from flp2p.models import build_model, train\n"
        "rng = np.random.default_rng(0)\n"
        "images = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)\n"
        "labels = rng.integers(0, 10, 32)\n"
        "train(build_model((1, 28, 28), 10), images, labels, epochs=1,"
        " batch_size=8, lr=0.05)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
