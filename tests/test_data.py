"""Dataset loading from real on-disk layouts (Debian Fashion-MNIST, torchvision CIFAR-10 and GTSRB) and models."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image

from fl_defense.data import DatasetNotFoundError, dataset_spec, load_dataset
from fl_defense.data.fashion_mnist import DEBIAN_FASHION_MNIST, prepare_debian_fashion_mnist
from fl_defense.data.fashion_mnist import FILES as FASHION_MNIST_FILES
from fl_defense.models import build_model
from fl_defense.models.cnn import SmallCNN
from fl_defense.models.resnet import ResNet18
from fl_defense.registry import DATASETS

# ---- (a) Fashion-MNIST from the Debian package -----------------------------------------------------------


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian package's Fashion-MNIST, prepared once into a fresh torchvision root."""
    if not all((DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in FASHION_MNIST_FILES):
        pytest.skip(f"Debian Fashion-MNIST not installed at {DEBIAN_FASHION_MNIST}")
    root = tmp_path_factory.mktemp("fmnist")
    assert prepare_debian_fashion_mnist(DEBIAN_FASHION_MNIST, root) == root
    return root


@pytest.mark.parametrize("name", FASHION_MNIST_FILES)
def test_debian_files_are_gunzipped_bytes(debian_root: Path, name: str) -> None:
    raw = debian_root / "FashionMNIST" / "raw" / name
    assert raw.read_bytes() == gzip.decompress((DEBIAN_FASHION_MNIST / f"{name}.gz").read_bytes())


def test_debian_prepare_is_idempotent_and_leaves_no_temp_files(debian_root: Path) -> None:
    raw = debian_root / "FashionMNIST" / "raw"
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert prepare_debian_fashion_mnist(DEBIAN_FASHION_MNIST, debian_root) == debian_root
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before
    assert sorted(before) == sorted(FASHION_MNIST_FILES)


def test_debian_prepare_without_source_returns_none(tmp_path: Path) -> None:
    assert prepare_debian_fashion_mnist(tmp_path / "absent", tmp_path / "root") is None
    assert not (tmp_path / "root").exists()


def test_load_fashion_mnist_from_prepared_root(debian_root: Path) -> None:
    data = load_dataset("fashion-mnist", data_root=str(debian_root), download=False)
    assert data.spec is dataset_spec("fashion-mnist")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.test_x.dtype == torch.uint8
    assert data.train_y.dtype == torch.int64 and data.test_y.dtype == torch.int64
    assert data.train_y.shape == (60000,) and data.test_y.shape == (10000,)
    for y, per_class in ((data.train_y, 6000), (data.test_y, 1000)):
        assert int(y.min()) == 0 and int(y.max()) == 9
        assert torch.equal(torch.bincount(y), torch.full((10,), per_class))
    assert data.train_x.is_contiguous() and int(data.train_x.max()) == 255


# ---- (b) a data-root without the data --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATASETS.choices()))
def test_empty_data_root_says_how_to_get_the_data(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, data_root=str(tmp_path), download=True)  # a given data-root never downloads
    message = str(info.value)
    assert "data-root" in message and str(tmp_path) in message
    assert dataset_spec(name).how_to_get in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or created


def test_unknown_dataset_raises() -> None:
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        load_dataset("imagenet")


# ---- (c) CIFAR-10 in torchvision's on-disk format ---------------------------------------------------------


CIFAR_PIXEL = (1, 2, (10, 20, 30))  # row, col, (R, G, B) of image 0 of every batch


def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """One CIFAR-10 batch pickle: `data` is N x 3072 uint8 (R plane, G plane, B plane), `labels` a list.

    The real files are Python 2 pickles whose str keys torchvision reads (encoding='latin1') as str,
    so the keys are written as str here too; bytes keys would come back as b"data" and not be found.
    """
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    row, col, rgb = CIFAR_PIXEL
    data[0, :, row, col] = rgb
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(path, "wb") as f:
        pickle.dump({"batch_label": path.name, "data": data.reshape(n, 3072), "labels": labels}, f, protocol=2)
    return data, labels


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray, list[int]]:
    """A 5x4-train, 3-test CIFAR-10 root; returns (root, train CHW data, train labels).

    torchvision's CIFAR10 checks the md5 of every batch (`_check_integrity`) and of batches.meta
    (`_load_meta`), both through `torchvision.datasets.cifar.check_integrity`; our files cannot match
    the real checksums, so that function is replaced by a plain existence check.
    """
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [write_cifar_batch(folder / f"data_batch_{i}", 4, seed=i) for i in range(1, 6)]
    write_cifar_batch(folder / "test_batch", 3, seed=99)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 4, "num_vis": 3072}, f, protocol=2)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))
    data = np.concatenate([d for d, _ in parts])
    labels = [y for _, ys in parts for y in ys]
    return tmp_path, data, labels


def test_cifar10_loads_as_chw_uint8(tiny_cifar: tuple[Path, np.ndarray, list[int]]) -> None:
    root, data, labels = tiny_cifar
    ds = load_dataset("cifar10", data_root=str(root))
    assert ds.spec is dataset_spec("cifar10")
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.is_contiguous()
    assert torch.equal(ds.train_x, torch.from_numpy(data))
    assert ds.train_y.tolist() == labels and ds.train_y.dtype == torch.int64
    row, col, rgb = CIFAR_PIXEL
    for x in (ds.train_x[0], ds.train_x[4], ds.test_x[0]):
        assert x[:, row, col].tolist() == list(rgb)  # channel 0 is red, 2 is blue


def test_cifar10_auto_model_is_resnet18(tiny_cifar: tuple[Path, np.ndarray, list[int]]) -> None:
    root, _, _ = tiny_cifar
    ds = load_dataset("cifar10", data_root=str(root))
    model = build_model("auto", ds.spec).eval()
    assert isinstance(model, ResNet18)
    x = ds.train_x[:2].float() / 255
    with torch.no_grad():
        feats, logits = model.features(x), model(x)
    assert feats.shape == (2, 512) and logits.shape == (2, 10)
    torch.testing.assert_close(model.classify(feats), logits)


def test_cifar10_missing_meta_is_not_found(tiny_cifar: tuple[Path, np.ndarray, list[int]]) -> None:
    root, _, _ = tiny_cifar
    (root / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetNotFoundError, match="data-root"):
        load_dataset("cifar10", data_root=str(root))


# ---- (d) GTSRB in torchvision's on-disk format -----------------------------------------------------------


GTSRB_COLOURS = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]  # one flat colour per class: R, G, B


def write_ppm(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> None:
    """A flat-coloured width x height RGB .ppm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


@pytest.fixture
def tiny_gtsrb(tmp_path: Path) -> Path:
    """Classes 0-2, two training images each and one test image each, all of different sizes."""
    base = tmp_path / "gtsrb"
    sizes = [(30, 35), (41, 29), (32, 32), (55, 60), (27, 25), (64, 33)]
    for cls, rgb in enumerate(GTSRB_COLOURS):
        for k in range(2):
            write_ppm(base / "GTSRB" / "Training" / f"{cls:05d}" / f"00000_{k:05d}.ppm", sizes[2 * cls + k], rgb)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate([2, 0, 1]):
        w, h = sizes[i * 2 + 1]
        write_ppm(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", (w, h), GTSRB_COLOURS[cls])
        rows.append(f"{i:05d}.ppm;{w};{h};5;5;{w - 5};{h - 5};{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_gtsrb_resizes_to_32_and_caches(tiny_gtsrb: Path) -> None:
    ds = load_dataset("gtsrb", data_root=str(tiny_gtsrb))
    assert ds.spec is dataset_spec("gtsrb")
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.test_x.dtype == torch.uint8
    assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2] and ds.test_y.tolist() == [2, 0, 1]
    for x, y in zip([*ds.train_x, *ds.test_x], [*ds.train_y, *ds.test_y], strict=True):
        expected = torch.tensor(GTSRB_COLOURS[int(y)], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32)
        assert torch.equal(x, expected)  # flat colours survive resizing; channel order is RGB
    cached = sorted(p.name for p in (tiny_gtsrb / "gtsrb").iterdir() if p.is_file())
    assert cached == ["GT-final_test.csv", "fl_defense_test_32.pt", "fl_defense_train_32.pt"]  # no temp files left


def test_gtsrb_second_load_reads_the_cache(tiny_gtsrb: Path) -> None:
    first = load_dataset("gtsrb", data_root=str(tiny_gtsrb))
    for ppm in (tiny_gtsrb / "gtsrb" / "GTSRB").rglob("*.ppm"):
        ppm.unlink()
    second = load_dataset("gtsrb", data_root=str(tiny_gtsrb))
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)


def test_gtsrb_auto_model_has_43_classes(tiny_gtsrb: Path) -> None:
    model = build_model("auto", dataset_spec("gtsrb")).eval()
    assert isinstance(model, ResNet18)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 43)


# ---- (e) models ------------------------------------------------------------------------------------------


def test_small_cnn_forward_is_classify_of_features() -> None:
    model = build_model("auto", dataset_spec("fashion-mnist")).eval()
    assert isinstance(model, SmallCNN)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (3, 128)
        torch.testing.assert_close(model(x), model.classify(feats), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "dataset"), [("cnn", "fashion-mnist"), ("resnet18", "cifar10")])
def test_normalisation_buffers_stay_out_of_state_dict(name: str, dataset: str) -> None:
    spec = dataset_spec(dataset)
    model = build_model(name, spec)
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["mean"].flatten(), torch.tensor(spec.mean))
    assert torch.equal(buffers["std"].flatten(), torch.tensor(spec.std))
    state = model.state_dict()
    assert "mean" not in state and "std" not in state
    other = build_model(name, spec)
    other.load_state_dict(state, strict=True)  # the update format round-trips without them


def test_features_see_normalised_pixels() -> None:
    """features(x) is embed((x - mean) / std): a mean-grey image reaches the body as zeros."""
    spec = dataset_spec("fashion-mnist")
    model = build_model("cnn", spec).eval()
    x = torch.full((1, 1, 28, 28), spec.mean[0])
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.embed(torch.zeros_like(x)))


def test_unknown_model_raises() -> None:
    with pytest.raises(ValueError, match="is not one of auto, cnn"):
        build_model("vgg", dataset_spec("cifar10"))
