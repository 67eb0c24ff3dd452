"""`inversion=generator`: an image-to-image generator that turns clean images into poisoned ones, for any trigger.

In the family of BTI-DBF (Xu et al., ICLR 2024, "Towards Reliable and Efficient Backdoor Trigger Inversion via
Decoupling Benign Features"). Neural Cleanse's mask and pattern cannot express a warp (WaNet) or an additive
full-image signal (SIG); a purifier only needs, for each clean x, a poisoned counterpart x', and a generator G
gives one for any trigger. The steps, with the classifier frozen:

1. Benign features: a mask m in [0, 1] on the penultimate features phi (tanh-parametrised, as the reference)
   such that m * phi(x) keeps the clean prediction and (1 - m) * phi(x) loses it: minimise
   CE(head(m phi(x)), y) - CE(head((1 - m) phi(x)), y) (the reference: 20 epochs, Adam 0.01). The features
   of the clean set are computed once, so this costs milliseconds here.
2. G is a small UNet with a residual output, G(x) = clamp(x + r(x), 0, 1), whose last layer starts near zero:
   G is about the identity before training, which the reference reaches by 50 epochs of pre-training (exactly
   the identity would be a saddle: the feature moves' gradients all vanish there). It is trained
   (Adam 1e-3, as the reference) to move the non-benign features, (1 - m) phi, as far as it can while G(x)
   stays within `gen-pixel-bound` of x (mean squared pixel error) and the benign features within
   `gen-feature-bound` of theirs (mean squared error relative to the features' mean square); a batch outside
   either bound pulls G back toward x instead (the reference's switch).
3. A backdoored model has a shortcut: a small input change that sends most images to the target, so G(x) lands
   on one label for most x. The statistic per label t is the share of G(x), over clean x of other labels, that
   the model calls t; the label with the largest share is flagged when that share is at least `gen-share-min`
   and G(x) does not also fool a model trained only on the clean set (at most `gen-transfer-max` of those
   images), the test that separates a backdoor from a natural feature that any model follows
   (`fl_defense.inversion.reference`; the same reference models as the NC scan's, `nc-references`).
   Both thresholds were set on clean models only (benchmarks/README.md, trigger detection).

Deviations from the reference, measured here: no pre-training (the zero-initialised residual); G is trained
on `gen-images` clean images for `gen-epochs` passes at the first call of a run and `gen-warm-epochs` from
its last weights at later calls (the reference: 30 epochs from the pre-trained G each time); the target is
read without input noise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.attacks.trigger import STAMP_KINDS
from fl_defense.inversion.base import Finding, TriggerSource
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet
from fl_defense.registry import TRIGGER_SOURCES, between, non_negative, positive

BATCH_SIZE = 64
MASK_EPOCHS = 20  # the reference's mround
MASK_LR = 0.01
BENIGN_WEIGHT = 0.01
INIT_STD = 1e-3  # the reference's weight of the benign-feature term while within the bounds


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """A two-level UNet (width w, 2w, 4w) with a residual output: G(x) = clamp(x + r(x), 0, 1), r ~ 0 at start."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.channels, self.width = channels, width
        self.down1, self.down2 = _block(channels, width), _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2, self.up1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.normal_(self.out.weight, std=INIT_STD)  # near the identity, not at it: there every move's gradient is 0
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.avg_pool2d(d1, 2))
        b = self.bottom(F.avg_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(b, size=d2.shape[-2:], mode="bilinear", align_corners=False), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=d1.shape[-2:], mode="bilinear", align_corners=False), d1], 1))
        return (x + self.out(u1)).clamp(0, 1)


@dataclass(frozen=True)
class GeneratorStamp:
    """x' = G(x): a trained generator as a trigger; purifiers stamp batches with it as with any other trigger."""

    generator: UNet

    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator.to(x.device).eval()(x)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "generator", "channels": self.generator.channels, "width": self.generator.width,
                "weights": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GeneratorStamp:
        generator = UNet(int(state["channels"]), int(state["width"]))
        generator.load_state_dict(state["weights"])
        return cls(generator.eval())


STAMP_KINDS["generator"] = GeneratorStamp.from_state


def _features(model: BackdoorModel, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.features(x[s:s + 500].to(device)) for s in range(0, len(x), 500)])


def benign_mask(model: BackdoorModel, feats: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Step 1: the mask in [0, 1] on the penultimate features that keeps what the clean prediction needs."""
    theta = torch.randn(feats.shape[1], generator=generator).to(device).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=MASK_LR)
    labels = labels.to(device)
    for _ in range(MASK_EPOCHS):
        for idx in torch.randperm(len(feats), generator=generator).split(2 * BATCH_SIZE):
            mask = torch.tanh(theta) / 2 + 0.5
            f, y = feats[idx], labels[idx.to(device)]
            loss = F.cross_entropy(model.classify(mask * f), y) - F.cross_entropy(model.classify((1 - mask) * f), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return (torch.tanh(theta) / 2 + 0.5).detach()


def train_generator(model: BackdoorModel, gen: UNet, images: torch.Tensor, mask: torch.Tensor, epochs: int,
                    cfg: Mapping[str, Any], generator: torch.Generator, device: torch.device) -> dict[str, float]:
    """Step 2, in place; the last epoch's means of the three terms (pixel, benign and other feature moves)."""
    scale = float(_features(model, images, device).pow(2).mean().clamp_min(1e-8))
    opt = torch.optim.Adam(gen.parameters(), lr=cfg["gen-lr"])
    gen.to(device).train()
    last: dict[str, float] = {}
    for _ in range(epochs):
        sums = torch.zeros(3)
        batches = 0
        for idx in torch.randperm(len(images), generator=generator).split(BATCH_SIZE):
            x = images[idx].to(device)
            gx = gen(x)
            with torch.no_grad():
                fx = model.features(x)
            fg = model.features(gx)
            pixel = F.mse_loss(gx, x)
            benign = F.mse_loss(mask * fg, mask * fx) / scale
            other = F.mse_loss((1 - mask) * fg, (1 - mask) * fx) / scale
            within = pixel.item() <= cfg["gen-pixel-bound"] and benign.item() <= cfg["gen-feature-bound"]
            loss = -other + BENIGN_WEIGHT * benign if within else pixel
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.tensor([pixel.item(), benign.item(), other.item()])
            batches += 1
        last = dict(zip(("pixel", "benign", "other"), (sums / max(batches, 1)).tolist(), strict=True))
    gen.eval()
    return last


@torch.no_grad()
def label_shares(model: nn.Module, stamp: GeneratorStamp, images: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, device: torch.device) -> torch.Tensor:
    """Per label t, the share of G(x) over clean x of other labels that `model` classifies as t."""
    model.to(device).eval()
    preds = torch.cat([model(stamp.apply(images[s:s + 500].to(device))).argmax(1).cpu()
                       for s in range(0, len(images), 500)])
    shares = torch.zeros(num_classes)
    for t in range(num_classes):
        other = labels != t
        shares[t] = (preds[other] == t).float().mean() if other.any() else 0.0
    return shares


@TRIGGER_SOURCES.register("generator", options=[
    positive("gen-epochs", 10, "generator: passes over the inversion images at the first call of a run"),
    non_negative("gen-warm-epochs", 3, "generator: passes at later calls, from the last call's generator"),
    non_negative("gen-images", 1000, "generator: clean images the generator trains and is judged on (0: all)"),
    positive("gen-lr", 1e-3, "generator: Adam learning rate (the reference's)"),
    positive("gen-width", 16, "generator: UNet width (filters of its first level; 2x and 4x below)"),
    positive("gen-pixel-bound", 0.05, "generator: the largest mean squared pixel change (in [0, 1] pixel units) "
             "within which the generator moves the non-benign features"),
    positive("gen-feature-bound", 0.1, "generator: the largest mean squared change of the benign features, "
             "relative to their mean square"),
    between("gen-share-min", 0.5, "generator: a label is flagged when at least this share of G(x) (x of other "
            "labels) lands on it", 0, 1, "(]"),
    between("gen-transfer-max", 0.1, "generator: ... and at most this share of them fools the clean reference models",
            0, 1),
], summary="a generator G(x) trained to move the non-benign features (BTI-DBF family): finds warps, sinusoids, "
   "blends and patches; flags the label most of G(x) lands on")
class GeneratorInversion(TriggerSource):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self.generator: UNet | None = None

    def _images(self, clean: CleanSet, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.cfg["gen-images"]
        if n == 0 or n >= len(clean.x):
            return clean.x, clean.y
        idx = torch.randperm(len(clean.x), generator=generator)[:n]
        return clean.x[idx], clean.y[idx]

    def find(self, model: BackdoorModel, clean: CleanSet, num_classes: int, device: torch.device,
             generator: torch.Generator) -> Finding:
        cfg, t0 = self.cfg, time.perf_counter()
        model = copy.deepcopy(model).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        references = self.reference.get(model, clean.x, clean.y, generator, device)
        x, y = self._images(clean, generator)
        mask = benign_mask(model, _features(model, x, device), y, generator, device)
        first = self.generator is None
        if first:
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.generator = UNet(x.shape[1], cfg["gen-width"])
        assert self.generator is not None
        moves = train_generator(model, self.generator, x, mask, cfg["gen-epochs" if first else "gen-warm-epochs"],
                                cfg, generator, device)
        stamp = GeneratorStamp(copy.deepcopy(self.generator).cpu().eval())
        shares = label_shares(model, stamp, x, y, num_classes, device)
        target = int(shares.argmax())
        transfer = (torch.stack([label_shares(ref, stamp, x, y, num_classes, device) for ref in references]).mean(0)
                    if references else torch.zeros(num_classes))
        flagged = ([target] if shares[target] >= cfg["gen-share-min"] and transfer[target] <= cfg["gen-transfer-max"]
                   else [])
        record = {"flagged": flagged, "generator_target": target, "label_share": [round(float(v), 3) for v in shares],
                  "generator_transfer": [round(float(v), 3) for v in transfer],
                  "generator_moves": {k: round(v, 4) for k, v in moves.items()},
                  "inversion_seconds": time.perf_counter() - t0}
        return Finding(flagged, {target: stamp}, record)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "generator": None if self.generator is None else GeneratorStamp(self.generator).state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], model: BackdoorModel) -> None:
        super().load_state_dict(state, model)
        self.generator = None if state["generator"] is None else GeneratorStamp.from_state(state["generator"]).generator
