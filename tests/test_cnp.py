"""CNP: the loss by hand, the BN-neuron gates, the ANP target guess, pruning, and purification of real
backdoored CNNs (through `purify` and through the defense pipeline)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from conftest import Backdoored
from fl_defense.config import resolve
from fl_defense.defense import Defender
from fl_defense.inversion.anp import anp_target
from fl_defense.models import BackdoorModel
from fl_defense.purification import build_purifier
from fl_defense.purification.base import frozen_copy
from fl_defense.purification.cnp import CNP, NeuronGates, cnp_loss

CPU = torch.device("cpu")


def run_cnp(bd: Backdoored, trigger: Any, **overrides: Any) -> tuple[CNP, BackdoorModel]:
    """Purify `bd` with CNP and check that the input model was left untouched."""
    purifier = build_purifier(resolve({"defense": "cnp", "device": "cpu", **overrides}))
    assert isinstance(purifier, CNP)
    before = {k: v.clone() for k, v in bd.model.state_dict().items()}
    out = purifier.purify(bd.model, bd.clean, trigger, CPU, torch.Generator().manual_seed(0))
    assert out is not bd.model
    assert all(torch.equal(before[k], v) for k, v in bd.model.state_dict().items()), "CNP modified its input"
    return purifier, out


def test_cnp_loss_matches_hand_computation() -> None:
    c_ori, p_ori = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    c_mask, p_mask, c_noise = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]])
    tau = 0.5
    # Cosines: positives (c_mask,c_ori)=1, (p_mask,c_ori)=1/sqrt2, (c_noise,c_ori)=0;
    # negatives (c_noise,p_ori)=1, (c_mask,p_ori)=0, (p_mask,p_ori)=1/sqrt2.
    r = 1 / math.sqrt(2)
    logits = [v / tau for v in (1.0, r, 0.0, 1.0, 0.0, r)]
    total = sum(math.exp(v) for v in logits)
    expected = sum(-math.log(math.exp(logits[i]) / total) for i in range(3)) / 3
    assert cnp_loss(c_mask, p_mask, c_noise, c_ori, p_ori, tau).item() == pytest.approx(expected, rel=1e-6)
    # The batch mean: a second row where every view equals c_ori gives logsumexp - mean of positives.
    same = torch.tensor([[1.0, 0.0]])
    second = math.log(3 * math.exp(1 / tau) + 3) - 1 / tau
    batch = cnp_loss(torch.cat([c_mask, same]), torch.cat([p_mask, same]), torch.cat([c_noise, same]),
                     torch.cat([c_ori, same]), torch.cat([p_ori, torch.tensor([[0.0, 1.0]])]), tau)
    assert batch.item() == pytest.approx((expected + second) / 2, rel=1e-6)


def test_gates_reproduce_the_model_and_a_zero_mask_zeroes_the_bn_weight(bd: Backdoored) -> None:
    probe = frozen_copy(bd.model, CPU)
    gates = NeuronGates(probe, CPU)
    assert gates.names == ["body.1", "body.5"] and gates.size == 48
    x = bd.test_x[:64]
    with torch.no_grad():
        plain = probe.features(x)
        with gates.view("masked"):
            assert torch.allclose(probe.features(x), plain, atol=1e-5), "masks of 1 change nothing"
        gates.masks[1][7] = 0.0
        with gates.view("masked"):
            masked = probe.features(x)
        with gates.view("noisy"):
            assert torch.allclose(probe.features(x), masked, atol=1e-5), "zero noise is the masked view"
    reference = frozen_copy(bd.model, CPU)
    with torch.no_grad():
        reference.body[5].weight[7] = 0.0
        assert torch.allclose(masked, reference.features(x), atol=1e-5)
        assert torch.equal(probe.features(x), plain), "the original view ignores the masks"


def test_anp_target_finds_a_blended_backdoor_but_not_this_badnets_one(bd: Backdoored,
                                                                     bd_blended: Backdoored) -> None:
    # Blended: the ANP step sends hundreds of clean images to the target (measured: 190-500 more, every
    # other class fewer or about as many, for eps 0.2 and 0.4 and four seeds).
    for seed in (0, 1):
        target, growth = anp_target(bd_blended.model, bd_blended.clean.x, 0.4, torch.Generator().manual_seed(seed),
                                    CPU)
        assert target == bd_blended.target and sum(growth) == 0
        assert growth[target] > 100 + max(g for c, g in enumerate(growth) if c != target)
    # BadNets (a 4x4 corner patch): perturbing the BN neurons does not call up the patch's shortcut, so
    # another label gains most (the target's count fell on one CPU and rose by 69 against another
    # label's larger gain on an AVX-512 one: the float path differs); on the default federated BadNets
    # model the heuristic did not pick the target either (eps 0.02-0.8), so the pipeline's default is
    # the NC scan.
    target, growth = anp_target(bd.model, bd.clean.x, 0.4, torch.Generator().manual_seed(0), CPU)
    assert target != bd.target and growth[target] > growth[bd.target]


def test_cnp_with_the_true_trigger_removes_most_of_the_backdoor(bd: Backdoored) -> None:
    # This centrally trained CNN (BA 0.84) shares its backdoor neurons with clean features: a greedy
    # search on the test set's ASR needed 3 neurons and 7 BA points for ASR 0.06. CNP's defaults
    # (budget 0.025 on the 1,000 clean images, at most 12 neurons) measured ASR 0.09-0.12 at a
    # test BA drop of 0.035-0.040 for 5, 7 and 10 epochs on one CPU; on an AVX-512 one (one torch thread), whose
    # float path trains a slightly different fixture (BA 0.83, ASR 1.0), ASR 0.39, 0.26 and 0.21 at a BA drop of
    # 0.018. The test asks for most of the backdoor gone (ASR below one half), not for the level one machine's
    # fixture happens to reach.
    purifier, out = run_cnp(bd, bd.trigger, **{"cnp-epochs": 5})
    assert bd.asr(out) < 0.5
    assert bd.ba(out) > bd.ba(bd.model) - 0.05
    assert 1 <= len(purifier.pruned) <= 12
    assert purifier.report()["cnp_pruned"] == [f"{name}[{i}]" for name, i in purifier.pruned]
    assert purifier.report()["cnp_pruned_share"] == len(purifier.pruned) / 48  # the small CNN's 16 + 32 BN neurons


@pytest.mark.parametrize(("ratio", "count"), [(0.001, 1), (0.1, 4), (0.25, 12)])
def test_pruning_zeroes_exactly_the_share_asked_for(bd: Backdoored, ratio: float, count: int) -> None:
    purifier, out = run_cnp(bd, bd.trigger, **{"cnp-epochs": 1, "cnp-prune-ratio": ratio, "cnp-max-ba-drop": 0.0})
    assert len(purifier.pruned) == count == len(set(purifier.pruned))
    zeroed = []
    for name in ("body.1", "body.5"):
        bn = out.get_submodule(name)
        off = (bn.weight == 0) & (bn.bias == 0)
        zeroed += [(name, int(i)) for i in off.nonzero().flatten()]
    assert sorted(zeroed) == sorted(purifier.pruned)
    with torch.no_grad():
        maps = out.feature_maps(bd.test_x[:32])
    for name, i in purifier.pruned:
        assert torch.all(maps[0 if name == "body.1" else 1][:, i] == 0), "a pruned neuron still fires"


def test_cnp_asks_for_the_run_s_trigger_source_or_its_own_guess() -> None:
    assert build_purifier(resolve({"defense": "cnp"})).trigger_source() == "nc+warp+blend"  # the default source
    assert build_purifier(resolve({"defense": "cnp", "cnp-target": "anp"})).trigger_source() == "anp"
    assert build_purifier(resolve({"defense": "cnp", "inversion": "anp"})).trigger_source() == "anp"


def test_pipeline_runs_cnp_with_its_own_target(bd_blended: Backdoored) -> None:
    cfg = resolve({"defense": "cnp", "cnp-target": "anp", "cnp-epochs": 2, "nc-epochs": 3, "nc-images": 500,
                   "device": "cpu", "target-label": bd_blended.target})
    defender = Defender(cfg, bd_blended.clean, 10, CPU, lambda m: (bd_blended.ba(m), bd_blended.asr(m)))
    outcome = defender(bd_blended.model, torch.Generator().manual_seed(0))
    record = outcome.record
    assert record["purified"] and record["trigger_source"] == "scan" and record["true_target_found"]
    assert record["flagged"] == [bd_blended.target] and sum(record["anp_label_growth"]) == 0
    assert "mask_l1" not in record, "no NC scan ran"
    assert record["inversion_seconds"] > 0 and record["purify_seconds"] > 0 and record["cnp_pruned"]
    assert outcome.model is not bd_blended.model
