"""BA and ASR: clean accuracy, and the share of non-target images a trigger sends to the target; and
durability, how many rounds a backdoor outlives the attack that planted it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fl_defense.attacks.base import Attack, evaluation_attack
from fl_defense.attacks.trigger import Stamp
from fl_defense.data import ImageData, to_float
from fl_defense.training import autocast


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
            trigger: Stamp | None = None, amp: bool = False) -> torch.Tensor:
    """Predicted labels for uint8 (or [0,1] float) images, optionally stamped with a trigger first;
    with `amp` the forward pass runs in mixed precision."""
    model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = (to_float(x) if x.dtype == torch.uint8 else x).to(device)
        if trigger is not None:
            x = trigger.apply(x)
        with autocast(device, amp):
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
                   device: torch.device = torch.device("cpu"), amp: bool = False) -> float:
    """BA: accuracy on the clean test set."""
    return (predict(model, images, batch_size, device, amp=amp) == labels).float().mean().item()


def attack_success_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trigger: Stamp,
                        target: int, batch_size: int = 1000, device: torch.device = torch.device("cpu"),
                        amp: bool = False) -> float:
    """ASR: among test images whose true label is not the target, the share classified as the target once triggered."""
    keep = labels != target
    if not keep.any():
        return float("nan")
    pred = predict(model, images[keep], batch_size, device, trigger, amp)
    return (pred == target).float().mean().item()


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, batch_size: int,
            device: torch.device, amp: bool = False) -> dict[str, float]:
    """BA and ASR of a model on a test set for an attack's trigger and target, with ASR's two parts, from one pass
    over the clean images and one over the triggered non-target ones. `clean_to_target`: the share of non-target
    images the model classifies as the target without any trigger, which ASR counts too (on the hard setting a
    defended model at BA 0.81 sent 6.5% of clean Dress and Shirt images to T-shirt, ASR 0.063); `asr_beyond_clean`:
    the share the trigger sends to the target that the model does not already send there clean, the backdoor's
    own part (0.003 on that model)."""
    clean = predict(model, images, batch_size, device, amp=amp)
    keep = labels != attack.target
    if not keep.any():
        nan = float("nan")
        return {"ba": (clean == labels).float().mean().item(), "asr": nan, "clean_to_target": nan,
                "asr_beyond_clean": nan}
    triggered = predict(model, images[keep], batch_size, device, attack.trigger, amp) == attack.target
    natural = clean[keep] == attack.target
    return {"ba": (clean == labels).float().mean().item(), "asr": triggered.float().mean().item(),
            "clean_to_target": natural.float().mean().item(),
            "asr_beyond_clean": (triggered & ~natural).float().mean().item()}


def ba_asr(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, batch_size: int,
           device: torch.device, amp: bool = False) -> tuple[float, float]:
    """BA and ASR of a model on a test set for an attack's trigger and target."""
    found = measure(model, images, labels, attack, batch_size, device, amp)
    return found["ba"], found["asr"]


def extra_asr(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, batch_size: int,
              device: torch.device) -> dict[str, float]:
    """ASR of each of an attack's extra triggers (DBA's pieces), by name; empty for most attacks."""
    return {name: attack_success_rate(model, images, labels, t, attack.target, batch_size, device)
            for name, t in attack.extra_triggers().items()}


class Evaluator:
    """BA and ASR of any model of a run, on its test set and for its attack's trigger (the configured one, or
    BadNets' for `attack=none`): what the server reports each round and what a defense is judged by."""

    def __init__(self, cfg: Mapping[str, Any], data: ImageData, device: torch.device) -> None:
        self.attack = evaluation_attack(cfg, data.spec.shape, data.spec.num_classes)
        self.data, self.device = data, device
        self.batch_size, self.amp = cfg["eval-batch-size"], cfg["amp"]

    def __call__(self, model: nn.Module) -> tuple[float, float]:
        found = self.measure(model)
        return found["ba"], found["asr"]

    def measure(self, model: nn.Module) -> dict[str, float]:
        """BA, ASR and ASR's two parts (`measure`)."""
        return measure(model, self.data.test_x, self.data.test_y, self.attack, self.batch_size, self.device, self.amp)

    def pieces(self, model: nn.Module) -> dict[str, float]:
        """ASR of each of the attack's extra triggers (DBA's pieces); empty for most attacks."""
        return extra_asr(model, self.data.test_x, self.data.test_y, self.attack, self.batch_size, self.device)


def attack_windows(attacking_rounds: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive rounds, as (first, last): the windows in which attackers came."""
    windows: list[tuple[int, int]] = []
    for r in sorted(attacking_rounds):
        if windows and r == windows[-1][1] + 1:
            windows[-1] = (windows[-1][0], r)
        else:
            windows.append((r, r))
    return windows


def durability(rounds: list[dict[str, Any]], scheduled: list[int], threshold: float = 0.1) -> list[dict[str, Any]]:
    """How long each attack window's backdoor outlives it: per window of the attack schedule, the rounds
    from the last round in which an attacker actually attacked (was sampled) until ASR first falls
    below `threshold`. `rounds` are results.json rows (`round`, `asr`, `attackers`), whose ASR is the
    deployed model's, after any purification of that round.

    `rounds_to_fall` is 0 if ASR was already below the threshold after that round, and None if it never
    fell before the next window started or the run ended (`observed` rounds were watched).
    """
    asr = {row["round"]: row["asr"] for row in rounds}
    attacked = {row["round"] for row in rounds if row.get("attackers")}
    windows = attack_windows(scheduled)
    out = []
    for i, (first, last) in enumerate(windows):
        hits = [r for r in range(first, last + 1) if r in attacked]
        if not hits:
            continue
        end = hits[-1]
        stop = windows[i + 1][0] - 1 if i + 1 < len(windows) else max(asr)
        fall = next((r for r in range(end, stop + 1) if r in asr and asr[r] < threshold), None)
        out.append({"window": [first, last], "last_attack": end, "asr_at_last_attack": asr.get(end),
                    "rounds_to_fall": None if fall is None else fall - end, "observed": stop - end})
    return out


FILTER_COUNTS = ("tp", "fp", "fn", "tn")


def filtering(considered: list[int], left_out: list[int], malicious: list[int]) -> dict[str, float | int | None]:
    """How well a rule that leaves clients out picked the malicious ones among `considered` (partition ids), against
    the ground truth the server knows from the config and seed: counts, precision, recall, F1 and false-positive
    rate (None where undefined: precision when nobody was left out, recall when no attacker was there)."""
    pool, out, bad = set(considered), set(left_out), set(malicious) & set(considered)
    tp, fp = len(out & bad), len(out - bad)
    fn, tn = len(bad - out), len(pool - out - bad)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, **rates(tp, fp, fn, tn)}


def rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | None]:
    """Precision, recall, F1 and false-positive rate of the counts; None where a ratio has nothing to count."""
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall) if precision + recall else 0.0) \
        if precision is not None and recall is not None else None
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fp / (fp + tn) if fp + tn else None}


def filtering_over_run(rounds: list[dict[str, Any]], report: str) -> dict[str, float | int | None] | None:
    """The counts of every round's `report` (e.g. 'aggregation', 'shadow') summed over the run, and their rates."""
    per_round = [row[report]["filtering"] for row in rounds if isinstance(row.get(report), dict)
                 and "filtering" in row[report]]
    if not per_round:
        return None
    totals = {k: sum(int(f[k]) for f in per_round) for k in FILTER_COUNTS}
    return {**totals, **rates(**totals), "rounds": len(per_round)}
