"""Triggers in [0, 1] pixel space.

Most triggers are a masked pattern, x' = (1 - alpha*m) * x + alpha*m * p: a BadNets patch is a hard
mask (alpha 1) over a small square, a Blended trigger a full-image mask at low alpha, DBA's pieces
bars. Others transform the image in another way (WaNet warps it, SIG adds a signal); everything that
measures or plants a trigger needs only `Stamp.apply`. Applying a trigger to images in [0, 1] keeps
them in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fl_defense.errors import ConfigError


class TriggerError(ConfigError):
    """A trigger that cannot be built for this image shape (size, location, file)."""


class Stamp(Protocol):
    """Anything that turns clean images (N x C x H x W in [0, 1]) into triggered ones."""

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StampMix:
    """Several stamps taking turns over a batch: image i gets stamp i mod k (a purifier unlearns them all)."""

    stamps: tuple[Stamp, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for i, stamp in enumerate(self.stamps):
            out[i::len(self.stamps)] = stamp.apply(x[i::len(self.stamps)])
        return out

    def state_dict(self) -> dict[str, Any]:
        """Its stamps' states, in order (the defense memory keeps a label's mix: nc+warp inverted it twice)."""
        return {"kind": "mix", "stamps": [s.state_dict() for s in self.stamps]}  # type: ignore[attr-defined]


def mix(stamps: list[Stamp]) -> Stamp:
    """One stamp for a purifier: the only one, or all of them taking turns over the images."""
    return stamps[0] if len(stamps) == 1 else StampMix(tuple(stamps))


@dataclass(frozen=True)
class Trigger:
    """Pattern p (C x H x W) and mask m (1 x H x W or C x H x W), both in [0, 1], with opacity alpha."""

    pattern: torch.Tensor
    mask: torch.Tensor
    alpha: float = 1.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp a batch (N x C x H x W, float in [0, 1]); returns a new tensor."""
        m = self.mask.to(x.device, x.dtype) * self.alpha
        return x * (1 - m) + m * self.pattern.to(x.device, x.dtype)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers, for a weights-only checkpoint (`stamp_from_state` reads it back)."""
        return {"kind": "mask", "pattern": self.pattern, "mask": self.mask, "alpha": float(self.alpha)}


def _mask_from_state(state: Mapping[str, Any]) -> Stamp:
    return Trigger(pattern=state["pattern"], mask=state["mask"], alpha=float(state["alpha"]))


# How each kind of stamp that a trigger source produces is rebuilt from its `state_dict` (a source module that
# produces another kind adds it here).
STAMP_KINDS: dict[str, Callable[[Mapping[str, Any]], Stamp]] = {
    "mask": _mask_from_state,
    "mix": lambda state: StampMix(tuple(stamp_from_state(s) for s in state["stamps"])),
}


def stamp_from_state(state: Mapping[str, Any]) -> Stamp:
    """A stamp saved with its `state_dict` (what the defense memory keeps in a checkpoint)."""
    kind = state.get("kind", "mask")
    if kind not in STAMP_KINDS:
        raise ValueError(f"unknown stamp kind {kind!r}; known: {', '.join(STAMP_KINDS)}")
    return STAMP_KINDS[kind](state)


def square_mask(shape: tuple[int, int, int], size: int, location: str) -> torch.Tensor:
    """A 1 x H x W mask with a size x size square at a named corner, the centre, or 'row,col'."""
    _, h, w = shape
    if size < 1 or size > min(h, w):
        raise TriggerError(f"config key 'trigger-size': {size} does not fit a {h}x{w} image; "
                           f"allowed: 1..{min(h, w)}")
    r, c = place(shape, size, size, location)
    mask = torch.zeros(1, h, w)
    mask[:, r:r + size, c:c + size] = 1.0
    return mask


def place(shape: tuple[int, int, int], height: int, width: int, location: str) -> tuple[int, int]:
    """Top-left pixel of a height x width box at a named corner, the centre, or 'row,col' of the image."""
    _, h, w = shape
    rows = {"top": 0, "bottom": h - height, "center": (h - height) // 2}
    cols = {"left": 0, "right": w - width, "center": (w - width) // 2}
    if location == "center":
        r, c = rows["center"], cols["center"]
    elif "," in location:
        r, c = (int(v) for v in location.split(","))
    else:
        vert, horiz = location.split("-")
        r, c = rows[vert], cols[horiz]
    if not (0 <= r <= h - height and 0 <= c <= w - width):
        raise TriggerError(f"config key 'trigger-location': {location!r} puts a {height}x{width} trigger outside "
                           f"the {h}x{w} image")
    return r, c


def named_pattern(name: str, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A full-image pattern: checkerboard (BadNets' grid), white, or seeded uniform noise."""
    c, h, w = shape
    if name == "checkerboard":
        grid = (torch.arange(h).view(-1, 1) + torch.arange(w).view(1, -1)) % 2 == 0
        return grid.float().expand(c, h, w).clone()
    if name == "white":
        return torch.ones(c, h, w)
    if name == "noise":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(c, h, w, generator=g)
    raise TriggerError(f"config key 'trigger-pattern': {name!r} is not checkerboard, white, noise, or a file")


def _read_image_file(p: Path, key: str) -> np.ndarray:
    """The array of a .npy (never unpickled) or .png file; an unreadable one is a TriggerError naming it."""
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(p) as image:
                arr = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - numpy and PIL raise many types for empty, truncated or foreign files
        kind = "a readable .npy array" if p.suffix.lower() == ".npy" else "a readable PNG image"
        raise TriggerError(f"{key}: {str(p)!r} is not {kind} ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype == object:
        raise TriggerError(f"{key}: {str(p)!r} is not a single numeric array")
    return arr


def load_image_file(path: str | Path, shape: tuple[int, int, int], what: str) -> torch.Tensor:
    """Load a user-supplied pattern or mask (.npy or .png) as a float tensor in [0, 1].

    Accepted layouts: H x W, H x W x C, or C x H x W; uint8 (0-255) or float in [0, 1].
    A mask may have one channel or as many as the image.
    """
    p = Path(path)
    key = f"config key '{what}'"
    if not p.is_file():
        raise TriggerError(f"{key}: file {str(p)!r} " + ("is a folder" if p.is_dir() else "does not exist"))
    if p.suffix.lower() not in (".npy", ".png"):
        raise TriggerError(f"{key}: {str(p)!r} must end in .npy or .png")
    arr = _read_image_file(p, key)
    if arr.dtype.kind not in "uif" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise TriggerError(f"{key}: {str(p)!r} holds {arr.dtype} values that are not all finite numbers")
    c, h, w = shape
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3):
        arr = arr.transpose(2, 0, 1)
    if arr.ndim != 3 or arr.shape[1:] != (h, w):
        raise TriggerError(f"{key}: {str(p)!r} has shape {arr.shape}; expected {h}x{w}, {h}x{w}xC or Cx{h}x{w}")
    if arr.shape[0] == 4:
        arr = arr[:3]
    if arr.shape[0] not in (1, c):
        raise TriggerError(f"{key}: {str(p)!r} has {arr.shape[0]} channels; the images have {c}")
    t = torch.from_numpy(arr.astype(np.float32))
    if arr.dtype == np.uint8:
        t = t / 255.0
    if t.min() < 0 or t.max() > 1:
        raise TriggerError(f"{key}: {str(p)!r} has values outside [0, 1] (or 0-255 for uint8)")
    return t
