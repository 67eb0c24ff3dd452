"""FoolsGold (Fung et al., RAID 2020): sybils pushing one backdoor send similar updates round after round.

Each client's updates are summed over the rounds it took part in (its history). Clients whose histories
point the same way as another's are down-weighted:
1. cs_ij = cosine similarity of histories i and j (i != j); v_i = max_j cs_ij.
2. Pardoning: if v_j > v_i > 0, cs_ij *= v_i / v_j, so an honest client that happens to resemble a sybil
   is not punished as much as the sybil, which resembles another sybil more.
3. alpha_i = 1 - max_j cs_ij, clipped to [0, 1] and divided by its maximum.
4. Logit: alpha_i = confidence * (ln(alpha_i / (1 - alpha_i)) + 0.5), clipped to [0, 1] (1 -> 1, 0 -> 0).
The new global model adds the alpha-weighted mean of this round's updates. The paper's optional
feature-importance weighting of the output layer is not used.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, MutableMapping, Sequence

import torch

from fl_defense.aggregation.base import Aggregate, apply_update, cosine_similarities, flat_updates


def foolsgold_weights(histories: torch.Tensor, confidence: float) -> torch.Tensor:
    """FoolsGold's per-client weights in [0, 1] for the rows of an (n, d) history matrix (float64)."""
    n = histories.shape[0]
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    cs = cosine_similarities(histories)
    cs.fill_diagonal_(-torch.inf)
    v = cs.max(dim=1).values
    pardon = (v[None, :] > v[:, None]) & (v[:, None] > 0)
    ratio = v[:, None] / torch.where(pardon, v[None, :], torch.ones_like(cs))
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    if alpha.max() > 0:
        alpha = alpha / alpha.max()
    with torch.no_grad():
        logit = confidence * (torch.log(alpha) - torch.log1p(-alpha) + 0.5)  # +-inf at 1 and 0, clipped below
    return logit.nan_to_num(posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def foolsgold(global_state: Mapping[str, torch.Tensor], states: Sequence[Mapping[str, torch.Tensor]],
              ids: Sequence[Hashable], history: MutableMapping[Hashable, torch.Tensor],
              confidence: float) -> Aggregate:
    """FoolsGold over the keys of `global_state`; `history` (client id -> summed updates) is updated in place."""
    updates = flat_updates(global_state, states)
    for cid, update in zip(ids, updates):
        history[cid] = history[cid] + update if cid in history else update.clone()
    weights = foolsgold_weights(torch.stack([history[cid] for cid in ids]), confidence)
    total = float(weights.sum())
    if total > 0:
        step = (weights[:, None].float() * updates).sum(dim=0) / total
    else:  # every client looks like a sybil of another: no update this round
        step = torch.zeros(updates.shape[1])
    return Aggregate(apply_update(global_state, step), {
        "weights": [float(w) for w in weights],
        "excluded": [i for i, w in enumerate(weights) if w == 0],
    })
