"""Triggers and attacks: where the patch goes, how it blends, user files, and batch poisoning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fl_defense.attacks import Attack, Trigger, TriggerError, build_attack, named_pattern, square_mask
from fl_defense.config import resolve
from fl_defense.errors import ConfigError

GRAY = (1, 28, 28)
COLOUR = (3, 32, 32)


def make_attack(overrides: dict[str, Any], shape: tuple[int, int, int] = GRAY, num_classes: int = 10) -> Attack:
    """An attack built exactly as the clients build it: from a resolved config."""
    attack = build_attack(resolve(overrides), shape, num_classes)
    assert attack is not None
    return attack


def random_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """A batch of float images in [0, 1]."""
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def expected_square(shape: tuple[int, int, int], size: int, row: int, col: int) -> torch.Tensor:
    """A 1 x H x W boolean mask with a size x size square at (row, col)."""
    m = torch.zeros(1, shape[1], shape[2], dtype=torch.bool)
    m[:, row:row + size, col:col + size] = True
    return m


# ---- BadNets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("location", "size", "row", "col"), [
    ("bottom-right", 3, 25, 25),
    ("bottom-left", 3, 25, 0),
    ("top-right", 4, 0, 24),
    ("top-left", 5, 0, 0),
    ("center", 4, 12, 12),
    ("center", 3, 12, 12),
    ("2,7", 3, 2, 7),
    ("0,0", 28, 0, 0),
])
def test_badnets_patch_location(location: str, size: int, row: int, col: int) -> None:
    attack = make_attack({"attack": "badnets", "trigger-size": size, "trigger-location": location})
    inside = expected_square(GRAY, size, row, col)
    assert torch.equal(attack.trigger.mask.bool(), inside)
    assert attack.trigger.alpha == 1.0
    x = random_images(4, GRAY)
    out = attack.trigger.apply(x)
    inside_b = inside.expand_as(out)
    assert torch.equal(out[~inside_b], x[~inside_b])
    pattern = attack.trigger.pattern.expand_as(out)
    assert torch.equal(out[inside_b], pattern[inside_b])
    assert out.min() >= 0 and out.max() <= 1


def test_badnets_defaults_checkerboard_bottom_right_colour() -> None:
    """Default BadNets on 3x32x32: opaque checkerboard square at the bottom-right, same in every channel."""
    attack = make_attack({"dataset": "cifar10", "attack": "badnets"}, COLOUR)
    size = int(attack.trigger.mask.sum().sqrt())
    assert torch.equal(attack.trigger.mask.bool(), expected_square(COLOUR, size, 32 - size, 32 - size))
    assert torch.equal(attack.trigger.pattern, named_pattern("checkerboard", COLOUR, seed=0))
    out = attack.trigger.apply(torch.full((1, *COLOUR), 0.5))
    patch = out[0, :, -size:, -size:]
    assert torch.equal(patch[0], patch[1]) and torch.equal(patch[1], patch[2])
    assert set(patch.unique().tolist()) == {0.0, 1.0}


def test_badnets_does_not_modify_input() -> None:
    attack = make_attack({"attack": "badnets"})
    x = random_images(2, GRAY)
    before = x.clone()
    attack.trigger.apply(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize(("size", "location", "key"), [
    (3, "26,0", "trigger-location"),
    (3, "0,26", "trigger-location"),
    (10, "20,20", "trigger-location"),
])
def test_trigger_that_does_not_fit_raises(size: int, location: str, key: str) -> None:
    with pytest.raises(TriggerError, match=f"config key '{key}'") as info:
        make_attack({"attack": "badnets", "trigger-size": size, "trigger-location": location})
    assert isinstance(info.value, ConfigError)


def test_trigger_size_larger_than_image_raises() -> None:
    """Larger than the dataset: caught by the config; larger than the shape given: caught by the trigger."""
    with pytest.raises(ConfigError, match="trigger-size"):
        resolve({"trigger-size": 29})
    with pytest.raises(TriggerError, match="trigger-size"):
        build_attack(resolve({"trigger-size": 20}), (1, 16, 16), 10)
    with pytest.raises(TriggerError, match="trigger-size"):
        square_mask(GRAY, 0, "center")


# ---- Blended ---------------------------------------------------------------------------------------------


def test_blended_default_is_whole_image_at_alpha_0_2() -> None:
    attack = make_attack({"attack": "blended"})
    t = attack.trigger
    assert t.alpha == pytest.approx(0.2)
    assert torch.equal(t.mask, torch.ones(1, 28, 28))
    assert t.pattern.shape == GRAY
    assert t.pattern.min() >= 0 and t.pattern.max() <= 1
    x = random_images(3, GRAY)
    torch.testing.assert_close(t.apply(x), 0.8 * x + 0.2 * t.pattern)


def test_blended_noise_is_seeded() -> None:
    a = make_attack({"attack": "blended", "seed": 1}).trigger.pattern
    b = make_attack({"attack": "blended", "seed": 1}).trigger.pattern
    c = make_attack({"attack": "blended", "seed": 2}).trigger.pattern
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("attack", "alpha"), [("blended", 0.5), ("badnets", 0.3), ("blended", 1.0)])
def test_trigger_alpha_override(attack: str, alpha: float) -> None:
    t = make_attack({"attack": attack, "trigger-alpha": alpha}).trigger
    assert t.alpha == pytest.approx(alpha)
    x = random_images(2, GRAY)
    m = t.mask * alpha
    torch.testing.assert_close(t.apply(x), (1 - m) * x + m * t.pattern)


def test_blended_with_trigger_size_is_a_square() -> None:
    t = make_attack({"attack": "blended", "trigger-size": 6, "trigger-location": "top-left"}).trigger
    assert torch.equal(t.mask.bool(), expected_square(GRAY, 6, 0, 0))


def test_attack_none_builds_nothing() -> None:
    assert build_attack(resolve({"attack": "none"}), GRAY, 10) is None


# ---- user-supplied trigger files -------------------------------------------------------------------------


def half_mask() -> np.ndarray:
    """A 28x28 mask covering the left half of the image."""
    m = np.zeros((28, 28), dtype=np.float32)
    m[:, :14] = 1.0
    return m


def gradient_pattern() -> np.ndarray:
    """A 28x28 float pattern in [0, 1] whose values differ by column."""
    return np.tile(np.linspace(0.0, 1.0, 28, dtype=np.float32), (28, 1))


def write_image(path: Path, arr: np.ndarray, as_uint8: bool) -> None:
    """Write a float [0, 1] array as .npy (float, or uint8 0-255) or as an 8-bit grey .png."""
    if path.suffix == ".png":
        Image.fromarray(np.round(arr * 255).astype(np.uint8)).save(path)
    else:
        np.save(path, np.round(arr * 255).astype(np.uint8) if as_uint8 else arr)


@pytest.mark.parametrize(("suffix", "as_uint8"), [(".npy", False), (".npy", True), (".png", True)])
def test_trigger_files_pattern_and_mask(tmp_path: Path, suffix: str, as_uint8: bool) -> None:
    pattern_file, mask_file = tmp_path / f"pattern{suffix}", tmp_path / f"mask{suffix}"
    write_image(pattern_file, gradient_pattern(), as_uint8)
    write_image(mask_file, half_mask(), as_uint8)
    t = make_attack({"attack": "badnets", "trigger-pattern": str(pattern_file),
                     "trigger-mask": str(mask_file)}).trigger
    assert t.pattern.shape == GRAY and t.mask.shape == GRAY
    assert torch.equal(t.mask[0], torch.from_numpy(half_mask()))
    torch.testing.assert_close(t.pattern[0], torch.from_numpy(gradient_pattern()), atol=1 / 255, rtol=0)
    x = random_images(3, GRAY)
    out = t.apply(x)
    assert torch.equal(out[..., 14:], x[..., 14:])
    assert torch.equal(out[..., :14], t.pattern.expand_as(out)[..., :14])


def test_trigger_mask_file_hwc_layout(tmp_path: Path) -> None:
    """A H x W x 1 mask is accepted and read as 1 x H x W."""
    f = tmp_path / "mask.npy"
    np.save(f, half_mask()[..., None])
    t = make_attack({"attack": "blended", "trigger-mask": str(f)}).trigger
    assert torch.equal(t.mask, torch.from_numpy(half_mask())[None])


@pytest.mark.parametrize(("key", "bad"), [
    ("trigger-pattern", np.zeros((32, 32), dtype=np.float32)),
    ("trigger-mask", np.zeros((28, 27), dtype=np.float32)),
    ("trigger-mask", np.zeros((2, 28, 28), dtype=np.float32)),
    ("trigger-pattern", np.zeros((28, 28, 28, 1), dtype=np.float32)),
])
def test_wrong_shaped_trigger_file_names_the_key(tmp_path: Path, key: str, bad: np.ndarray) -> None:
    f = tmp_path / "bad.npy"
    np.save(f, bad)
    with pytest.raises(TriggerError, match=f"config key '{key}'"):
        make_attack({"attack": "badnets", key: str(f)})


def test_trigger_file_values_out_of_range_raise(tmp_path: Path) -> None:
    f = tmp_path / "loud.npy"
    np.save(f, np.full((28, 28), 2.0, dtype=np.float32))
    with pytest.raises(TriggerError, match="config key 'trigger-pattern'.*outside"):
        make_attack({"attack": "badnets", "trigger-pattern": str(f)})


def test_missing_trigger_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trigger-mask"):
        resolve({"attack": "badnets", "trigger-mask": str(tmp_path / "nope.png")})


# ---- poison_batch ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "rate", "expected"), [(32, 0.2, 6), (10, 0.5, 5), (3, 0.1, 1), (8, 1.0, 8)])
def test_poison_batch_stamps_and_relabels_exactly_k(n: int, rate: float, expected: int) -> None:
    attack = make_attack({"attack": "badnets", "poison-rate": rate, "target-label": 7})
    assert expected == max(1, round(rate * n))
    x = random_images(n, GRAY)
    y = torch.arange(n) % 7  # never the target, so every relabel is visible
    x_orig, y_orig = x.clone(), y.clone()
    px, py = attack.poison_batch(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(x, x_orig) and torch.equal(y, y_orig)  # inputs untouched
    changed = (px != x).flatten(1).any(1)
    relabelled = py != y
    assert int(changed.sum()) == expected
    assert torch.equal(changed, relabelled)
    assert torch.all(py[relabelled] == 7)
    assert torch.equal(px[changed], attack.trigger.apply(x[changed]))
    assert torch.equal(px[~changed], x[~changed]) and torch.equal(py[~changed], y[~changed])


def test_poison_batch_is_seeded() -> None:
    attack = make_attack({"attack": "blended", "poison-rate": 0.25})
    x, y = random_images(16, GRAY), torch.zeros(16, dtype=torch.long) + 3
    a = attack.poison_batch(x, y, torch.Generator().manual_seed(5))
    b = attack.poison_batch(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---- property: any trigger keeps images in [0, 1] and leaves unmasked pixels alone -----------------------


unit_floats = st.floats(0.0, 1.0, width=32, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, (2, 3, 5, 5), elements=unit_floats),
    pattern=hnp.arrays(np.float32, (3, 5, 5), elements=unit_floats),
    mask=hnp.arrays(np.float32, (1, 5, 5), elements=st.one_of(st.just(0.0), unit_floats)),
    alpha=st.floats(0.0, 1.0, allow_nan=False),
)
def test_apply_stays_in_unit_range_and_keeps_unmasked_pixels(
        x: np.ndarray, pattern: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    xt = torch.from_numpy(x)
    out = Trigger(torch.from_numpy(pattern), torch.from_numpy(mask), alpha).apply(xt)
    assert out.min() >= 0.0 and out.max() <= 1.0
    untouched = torch.from_numpy(mask == 0).expand_as(out)
    assert torch.equal(out[untouched], xt[untouched])
