"""SPECTRE's outlier filter (Hayase et al., ICML 2021) on client updates, as shadow learning uses it.

Shadow learning (Wang et al., TMLR 2023) scores each round's clients with SPECTRE and trains its
shadow model only on the clients it keeps. The steps, all in float64:

1. Representation. The paper averages the backbone's activations over each client's target-label
   samples; a server here has no client data and does not know the target, so a client is
   represented by its update of the model's last layer (`head_keys`). A backdoor works by sending
   triggered features to the target label, which moves that label's row of the last layer in a way
   no honest client's update does; the last layer is also small (10 x 128 for the small CNN), where a
   projection of the whole update would be dominated by the many conv weights that both kinds of
   client move alike.
2. PCA to k dimensions: `pca_dims`, capped by h - 1 for the h clients the robust estimate keeps,
   since h points span at most h - 1 dimensions and the whitening needs a full-rank covariance.
3. Robust whitening: mean and covariance of the h = n - m clients closest to the coordinate-wise
   median, refined by concentration steps (FAST-MCD's C-step: re-estimate on the h points of smallest
   Mahalanobis distance until that set stops changing), so the m expected outliers do not inflate it.
   This is the weak step with few clients: with n/k around 2-3, a client outside the h-subset gets an
   inflated out-of-sample score, so the filter mostly drops the subset's complement; and a planted
   cluster that is tight and only moderately shifted (4-7 standard deviations, measured on synthetic
   data) can end up inside the subset. SPECTRE's own robust estimator (a spectral filter on fourth
   moments) is not reproduced.
4. QUE score (the paper's formula, with a matrix exponential; the authors' code exponentiates
   element-wise): with Sigma the second moment of the whitened points,
   Q = expm(alpha (Sigma - I) / (||Sigma||_2 - 1)) and score_i = z_i^T Q z_i / trace(Q).
   Q weights the directions in which the whitened points spread more than the inliers do; alpha = 0
   gives the plain Mahalanobis distance over k.
5. The m = floor(drop_factor x malicious share x n) highest scores are dropped, one client always kept.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from fl_defense.aggregation.base import flat_updates

MAX_C_STEPS = 50


@dataclass
class FilterResult:
    """Indices (into the input rows) kept and dropped, and every row's QUE score."""

    kept: list[int]
    dropped: list[int]
    scores: list[float]


def head_keys(trainable: Sequence[str]) -> list[str]:
    """The parameters of the model's last layer: those sharing the module prefix of the last trainable one."""
    prefix = trainable[-1].rpartition(".")[0]
    return [k for k in trainable if k.rpartition(".")[0] == prefix]


def update_representations(global_state: Mapping[str, torch.Tensor], states: Sequence[Mapping[str, torch.Tensor]],
                           keys: Collection[str]) -> torch.Tensor:
    """The clients' updates of `keys` as rows of an (n, d) float64 matrix."""
    part = {k: v for k, v in global_state.items() if k in keys}
    return flat_updates(part, states).double()


def drop_count(n: int, malicious_share: float, drop_factor: float) -> int:
    """floor(drop_factor x malicious_share x n), at most n - 1 (the shadow needs a client)."""
    m = math.floor(drop_factor * malicious_share * n + 1e-9)  # 1.5 x 0.2 x 10 is 3.0000000000000004, or 2.999...
    return max(0, min(m, n - 1))


def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """The rows of x, centred on their mean, projected onto their top-k principal directions."""
    centred = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:k].T


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance, with a ridge of 1e-9 of the mean variance so a flat direction stays invertible."""
    mu = x.mean(dim=0)
    c = x - mu
    cov = c.T @ c / max(len(x) - 1, 1)
    k = cov.shape[0]
    ridge = 1e-9 * float(torch.trace(cov)) / k + torch.finfo(torch.float64).tiny ** 0.5
    return mu, cov + ridge * torch.eye(k, dtype=x.dtype)


def robust_mean_cov(x: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the h-subset found by concentration steps from the h points nearest the median."""
    subset = torch.argsort((x - x.median(dim=0).values).norm(dim=1))[:h]
    for _ in range(MAX_C_STEPS):
        mu, cov = _mean_cov(x[subset])
        c = x - mu
        distances = (c @ torch.linalg.inv(cov) * c).sum(dim=1)
        nxt = torch.argsort(distances)[:h]
        if set(nxt.tolist()) == set(subset.tolist()):
            break
        subset = nxt
    return mu, cov


def whiten(x: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """(x - mu) cov^{-1/2}: the rows in coordinates where the estimate's covariance is the identity."""
    values, vectors = torch.linalg.eigh(cov)
    inv_sqrt = vectors @ torch.diag(values.clamp_min(torch.finfo(torch.float64).tiny).rsqrt()) @ vectors.T
    return (x - mu) @ inv_sqrt


def que_scores(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """QUE scores of whitened rows z. With no direction of excess spread (||Sigma||_2 <= 1) Q is the
    identity's limit, and the score the squared norm over k."""
    n, k = z.shape
    sigma = z.T @ z / n
    excess = float(torch.linalg.matrix_norm(sigma, ord=2)) - 1
    eye = torch.eye(k, dtype=z.dtype)
    q = torch.linalg.matrix_exp(alpha * (sigma - eye) / excess) if excess > 1e-12 else eye
    return (z @ q * z).sum(dim=1) / torch.trace(q)


def spectre_scores(reps: torch.Tensor, outliers: int, pca_dims: int, alpha: float) -> torch.Tensor:
    """QUE scores of the rows of `reps` (one client each), robust to `outliers` of them."""
    x = reps.double()
    h = len(x) - outliers
    k = max(1, min(pca_dims, h - 1, x.shape[1]))
    projected = pca(x, k)
    mu, cov = robust_mean_cov(projected, h)
    return que_scores(whiten(projected, mu, cov), alpha)


def filter_clients(reps: torch.Tensor, malicious_share: float, drop_factor: float = 1.5, pca_dims: int = 16,
                   alpha: float = 4.0) -> FilterResult:
    """Drop the floor(drop_factor x malicious_share x n) rows of highest QUE score (one row always kept)."""
    n = len(reps)
    m = drop_count(n, malicious_share, drop_factor)
    if n < 2:
        return FilterResult(list(range(n)), [], [0.0] * n)
    scores = spectre_scores(reps, m, pca_dims, alpha)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return FilterResult(sorted(order[m:]), sorted(order[:m]), [float(s) for s in scores])
