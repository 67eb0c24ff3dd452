"""The clean reference models: several, each its own, and a trigger's transfer rate averaged over them."""

from __future__ import annotations

import torch
from torch import nn

from fl_defense.inversion import LabelInversion
from fl_defense.inversion.reference import CleanReference, transfer_rates

CPU = torch.device("cpu")


class Always(nn.Module):
    """A model that calls every image `label`, and counts the images it saw."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return nn.functional.one_hot(torch.full((len(x),), self.label), 10).float()


def _inversion(label: int) -> LabelInversion:
    return LabelInversion(label, torch.zeros(1, 28, 28), torch.zeros(1, 28, 28), 0.0, 1.0, 1, True)


def test_a_transfer_rate_is_the_mean_over_the_reference_models() -> None:
    images, labels = torch.rand(40, 1, 28, 28), torch.arange(40) % 4
    rates = transfer_rates([Always(2), Always(0), Always(2)], [_inversion(t) for t in range(4)], images, labels, CPU)
    assert [rates[t] for t in range(4)] == [1 / 3, 0.0, 2 / 3, 0.0]


def test_a_transfer_rate_is_computed_when_first_read_and_kept() -> None:
    images, labels = torch.rand(40, 1, 28, 28), torch.arange(40) % 4
    judge = Always(2)
    rates = transfer_rates([judge], [_inversion(t) for t in range(4)], images, labels, CPU)
    assert judge.seen == 0 and rates.computed() == [None] * 4
    assert rates[2] == 1.0 and judge.seen == 30  # the 30 images of other labels, once
    assert rates[2] == 1.0 and judge.seen == 30
    assert rates.computed() == [None, None, 1.0, None] and len(rates) == 4


def test_each_reference_model_is_trained_on_its_own_and_kept(clean_model) -> None:  # noqa: ANN001 - fixture
    x, y = clean_model.clean.x[:256], clean_model.clean.y[:256]
    reference = CleanReference(epochs=1, count=3)
    models = reference.get(clean_model.model, x, y, torch.Generator().manual_seed(0), CPU)
    assert len(models) == 3
    first = [next(m.parameters()).detach().clone() for m in models]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert reference.get(clean_model.model, x, y, torch.Generator().manual_seed(5), CPU) is models  # trained once
    older = CleanReference(epochs=1, count=3)  # a checkpoint of a run that kept one reference: its state dict alone
    older.load_state_dict(models[1].state_dict(), clean_model.model)
    assert len(older.models) == 1 and torch.equal(next(older.models[0].parameters()), first[1])
    assert CleanReference(epochs=0, count=3).get(clean_model.model, x, y, torch.Generator(), CPU) == []
