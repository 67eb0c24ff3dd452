"""Neural Cleanse trigger inversion (Wang et al., S&P 2019) that finds the target label itself.

For a candidate label t, a mask m (1 x H x W) and pattern p (C x H x W), both tanh-parametrised in
[0, 1], are optimised so that (1 - m) * x + m * p is classified as t, minimising CE + lambda * |m|_1
with NC's adaptive lambda. A backdoor target needs a much smaller mask than any other label; the
MAD anomaly index of the mask norms tells it apart.

One implementation serves three schedules: a set of labels is optimised together (each label's
parameters, lambda and stopping state are its own; the loss is a sum, so this is the same
arithmetic as separate runs). `labels=[t]` one at a time is the classic loop; all labels at once
is the batched pass, which pays on GPUs. A label that stops early leaves the batch, so the batched
pass does no more work than the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.models.base import read_only

EPS = 1e-7


@dataclass(frozen=True)
class NCSettings:
    """Budget and schedule of one inversion. Defaults follow BackdoorBench's NC where not noted."""

    epochs: int = 80
    batch_size: int = 128
    lr: float = 0.1
    init_cost: float = 1e-3
    asr_threshold: float = 0.98
    patience: int = 5
    cost_multiplier: float = 2.0
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 25


@dataclass
class LabelInversion:
    """Result for one candidate label: the smallest successful mask found (or the last one)."""

    label: int
    mask: torch.Tensor
    pattern: torch.Tensor
    norm: float
    asr: float
    epochs: int
    reached: bool


@dataclass
class _State:
    """Per-label optimisation state (vectors over the labels optimised together)."""

    cost: torch.Tensor
    best_norm: torch.Tensor
    best_mask: torch.Tensor
    best_pattern: torch.Tensor
    best_asr: torch.Tensor
    last_mask: torch.Tensor
    last_pattern: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    moved_up: torch.Tensor
    moved_down: torch.Tensor
    stale: torch.Tensor
    done: torch.Tensor
    epochs: torch.Tensor


def _squash(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t) / (2 - EPS) + 0.5


def invert(model: nn.Module, images: torch.Tensor, labels: list[int], settings: NCSettings,
           generator: torch.Generator, device: torch.device) -> list[LabelInversion]:
    """Optimise a mask and pattern for each label in `labels` together; images are float in [0, 1].

    The model's weights are only read: their gradients are switched off for the scan and restored after.
    """
    with read_only(model, device) as frozen:
        return _invert(frozen, images, labels, settings, generator, device)


def _invert(model: nn.Module, images: torch.Tensor, labels: list[int], settings: NCSettings,
            generator: torch.Generator, device: torch.device) -> list[LabelInversion]:
    k = len(labels)
    _, c, h, w = images.shape
    mask_t = torch.zeros(k, 1, h, w, device=device, requires_grad=True)
    base = int(torch.randint(2**31 - 1, (1,), generator=generator))
    inits = [torch.rand(c, h, w, generator=torch.Generator().manual_seed(base + t)) * 2 - 1 for t in labels]
    pattern_t = torch.stack(inits).to(device).requires_grad_(True)
    opt = torch.optim.Adam([mask_t, pattern_t], lr=settings.lr, betas=(0.5, 0.9))
    target = torch.tensor(labels, device=device)
    inf = torch.full((k,), math.inf)
    st = _State(
        cost=torch.full((k,), settings.init_cost), best_norm=inf.clone(), best_mask=torch.zeros(k, 1, h, w),
        best_pattern=torch.zeros(k, c, h, w), best_asr=torch.zeros(k), last_mask=_squash(mask_t).detach().cpu(),
        last_pattern=_squash(pattern_t).detach().cpu(), up=torch.zeros(k), down=torch.zeros(k),
        moved_up=torch.zeros(k, dtype=torch.bool), moved_down=torch.zeros(k, dtype=torch.bool),
        stale=torch.zeros(k), done=torch.zeros(k, dtype=torch.bool), epochs=torch.zeros(k, dtype=torch.long))
    n = len(images)
    for _ in range(settings.epochs):
        active = ~st.done
        if not active.any():
            break
        rows = active.nonzero().squeeze(1).to(device)  # labels that stopped cost nothing from here on
        ka = len(rows)
        hits = torch.zeros(ka)
        norm_sum = torch.zeros(ka)
        batches = 0
        for idx in torch.randperm(n, generator=generator).split(settings.batch_size):
            x = images[idx].to(device)
            b = len(x)
            m, p = _squash(mask_t[rows]), _squash(pattern_t[rows])
            stamped = (1 - m.unsqueeze(1)) * x.unsqueeze(0) + (m * p).unsqueeze(1)
            logits = model(stamped.reshape(ka * b, c, h, w)).view(ka, b, -1)
            ce = F.cross_entropy(logits.reshape(ka * b, -1), target[rows].repeat_interleave(b), reduction="none")
            norms = m.flatten(1).sum(1)
            per_label = ce.view(ka, b).mean(1) + st.cost.to(device)[rows] * norms
            opt.zero_grad(set_to_none=True)
            per_label.sum().backward()
            opt.step()
            with torch.no_grad():
                hits += (logits.argmax(2) == target[rows].unsqueeze(1)).float().mean(1).cpu()
                norm_sum += norms.detach().cpu()
            batches += 1
        asr, norm = torch.zeros(k), torch.zeros(k)
        asr[active], norm[active] = hits / batches, norm_sum / batches
        _update(st, asr, norm, active, _squash(mask_t).detach().cpu(), _squash(pattern_t).detach().cpu(), settings)
    reached = st.best_norm < math.inf
    return [
        LabelInversion(label=labels[i], mask=st.best_mask[i] if reached[i] else st.last_mask[i],
                       pattern=st.best_pattern[i] if reached[i] else st.last_pattern[i],
                       norm=float(st.best_norm[i]) if reached[i] else float(st.last_mask[i].sum()),
                       asr=float(st.best_asr[i]), epochs=int(st.epochs[i]), reached=bool(reached[i]))
        for i in range(k)
    ]


def _update(st: _State, asr: torch.Tensor, norm: torch.Tensor, active: torch.Tensor, mask: torch.Tensor,
            pattern: torch.Tensor, s: NCSettings) -> None:
    """NC's end-of-epoch bookkeeping: keep the best mask, adapt lambda, decide early stopping."""
    st.epochs += active.long()
    st.last_mask[active], st.last_pattern[active] = mask[active], pattern[active]
    ok = active & (asr >= s.asr_threshold)
    better = ok & (norm < st.best_norm)
    improved = ok & (norm < st.best_norm * s.early_stop_threshold)
    st.best_mask[better], st.best_pattern[better] = mask[better], pattern[better]
    st.best_norm[better], st.best_asr[better] = norm[better], asr[better]
    st.stale = torch.where(improved, torch.zeros_like(st.stale), st.stale + active.float())
    if s.early_stop:
        st.done |= active & st.moved_up & st.moved_down & (st.stale >= s.early_stop_patience)
    st.up = torch.where(ok, st.up + 1, torch.zeros_like(st.up))
    st.down = torch.where(active & ~ok, st.down + 1, torch.zeros_like(st.down))
    raise_cost = st.up >= s.patience
    lower_cost = st.down >= s.patience
    st.cost = torch.where(raise_cost, st.cost * s.cost_multiplier, st.cost)
    st.cost = torch.where(lower_cost, st.cost / s.cost_multiplier ** 1.5, st.cost)
    st.moved_up |= raise_cost
    st.moved_down |= lower_cost
    st.up[raise_cost] = 0
    st.down[lower_cost] = 0


def anomaly_indices(norms: np.ndarray, log: bool = False) -> np.ndarray:
    """MAD anomaly index per label, positive below the median: (median - x) / (1.4826 * MAD).

    With `log`, the index is taken on log norms (scale-free: a mask 4x smaller than the median counts
    the same whether the median is 20 or 200 pixels).
    """
    values = np.log(np.maximum(norms, EPS)) if log else np.asarray(norms, dtype=float)
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (median - values) / max(mad, EPS)
