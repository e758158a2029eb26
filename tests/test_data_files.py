"""``load_data``: built-in sets and every file format, round trips and every kind of bad input.

The files are written here, in ``tmp_path``, by independent writers (numpy, torch, csv, PIL and
an IDX writer built from the format's specification), then read back through ``load_data`` with
``normalize="none"`` and compared exactly.
"""

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowdiff.data import DEFAULT_TOY_SIZE, Normalizer, dataset_names, load_data, sample_toy


def exact(path: Path, **kw: object):
    return load_data(path, normalize="none", **kw)


# ---------------------------------------------------------------------- built-in sets
def test_dataset_names_cover_the_issue() -> None:
    names = set(dataset_names())
    assert {"8gaussians", "gmm", "moons", "circles", "checkerboard", "spirals"} <= names
    assert {"swissroll", "pinwheel", "rings", "scurve", "digits"} <= names


def test_toy_is_standardised_and_raw_is_the_sample() -> None:
    data = load_data("moons", n=2000, generator=torch.Generator().manual_seed(3))
    assert data.x.shape == (2000, 2) and data.event_shape == (2,) and len(data) == 2000
    assert data.num_classes == 2 and data.y.shape == (2000,)
    # "auto" on vectors = per-feature standardisation: mean 0, (biased) std 1.
    assert torch.allclose(data.x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(data.x.std(0, unbiased=False), torch.ones(2), atol=1e-5)
    fresh = sample_toy("moons", 2000, torch.Generator().manual_seed(3))
    assert torch.allclose(data.raw(), fresh, atol=1e-5)
    assert len(load_data("rings")) == DEFAULT_TOY_SIZE


def test_digits() -> None:
    data = load_data("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == torch.float32
    assert data.num_classes == 10 and sorted(set(data.y.tolist())) == list(range(10))
    # 8x8 grey levels 0..16 mapped onto [-1, 1] by the 'images' normaliser.
    assert data.normalizer.kind == "images" and data.normalizer.max_value == 16
    assert data.x.min() == -1 and data.x.max() == 1
    raw = data.raw()
    assert torch.equal(raw, raw.round()) and raw.max() == 16
    sub = load_data("digits", n=100, generator=torch.Generator().manual_seed(0))
    again = load_data("digits", n=100, generator=torch.Generator().manual_seed(0))
    assert sub.x.shape == (100, 1, 8, 8) and torch.equal(sub.x, again.x)
    assert torch.equal(sub.y, again.y) and sub.num_classes == 10
    # A subset is a subset: each picked image is one of the originals with its label.
    flat = data.x.flatten(1)
    idx = torch.cdist(sub.x.flatten(1), flat).argmin(dim=1)
    assert torch.equal(flat[idx], sub.x.flatten(1)) and torch.equal(data.y[idx], sub.y)


# ---------------------------------------------------------------------- array files
def test_npy_any_event_shape(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(6, 3, 2)).astype(np.float32)
    np.save(tmp_path / "clouds.npy", x)
    data = exact(tmp_path / "clouds.npy")
    assert data.event_shape == (3, 2) and data.y is None and data.num_classes is None
    assert np.array_equal(data.x.numpy(), x)
    np.save(tmp_path / "scalars.npy", np.arange(5.0))
    assert exact(tmp_path / "scalars.npy").x.shape == (5, 1)  # (N,) -> N scalars


def test_npz_with_labels(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float64).reshape(4, 6)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 2, 1, 2]))
    data = exact(tmp_path / "a.npz")
    assert np.array_equal(data.x.numpy(), x) and data.y.tolist() == [0, 2, 1, 2]
    assert data.num_classes == 3
    np.savez(tmp_path / "b.npz", data=x, labels=np.array([1, 1, 0, 0]))
    assert exact(tmp_path / "b.npz").y.tolist() == [1, 1, 0, 0]
    np.savez(tmp_path / "c.npz", x)  # positional -> arr_0, no labels
    assert exact(tmp_path / "c.npz").y is None


def test_pt_tensor_and_dict(tmp_path: Path) -> None:
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "t.pt")
    assert torch.equal(exact(tmp_path / "t.pt").x, x)
    y = torch.tensor([0, 1, 0, 1, 1])
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    data = exact(tmp_path / "d.pt")
    assert torch.equal(data.x, x) and torch.equal(data.y, y) and data.num_classes == 2


def test_uint8_arrays_normalise_over_0_255(tmp_path: Path) -> None:
    x = np.zeros((3, 1, 4, 4), dtype=np.uint8)
    x[:, :, 0, 0] = 51  # max 51 in the data, but an 8-bit source spans [0, 255]
    np.save(tmp_path / "imgs.npy", x)
    data = load_data(tmp_path / "imgs.npy")
    assert data.normalizer.kind == "images" and data.normalizer.max_value == 255
    assert torch.allclose(data.x[:, 0, 0, 0], torch.full((3,), 51 / 255 * 2 - 1))


def test_csv_with_label_column_and_without_header(tmp_path: Path) -> None:
    with open(tmp_path / "pts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "Label", "b"])
        w.writerows([[0.5, 1, -2], [1.5, 0, 3e-3], [2.0, 1, 4]])
    data = exact(tmp_path / "pts.csv")
    assert torch.equal(data.x, torch.tensor([[0.5, -2], [1.5, 3e-3], [2.0, 4]]))
    assert data.y.tolist() == [1, 0, 1] and data.num_classes == 2
    (tmp_path / "plain.csv").write_text("1,2,3\n4,5,6\n")
    plain = exact(tmp_path / "plain.csv")
    assert plain.x.tolist() == [[1, 2, 3], [4, 5, 6]] and plain.y is None


# ---------------------------------------------------------------------- IDX
def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """IDX per its specification: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian
    uint32 sizes, then the bytes. Images: magic 0x00000803; labels: 0x00000801."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_images_with_labels(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)  # non-square: H=5, W=4
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    gz = ".gz" if compress else ""
    images_path = tmp_path / f"train-images-idx3-ubyte{gz}"
    labels_path = tmp_path / f"train-labels-idx1-ubyte{gz}"
    write_idx(images_path, images, compress=compress)
    write_idx(labels_path, labels, compress=compress)
    for path, magic in [(images_path, "00000803"), (labels_path, "00000801")]:
        raw = gzip.decompress(path.read_bytes()) if compress else path.read_bytes()
        assert raw[:4] == bytes.fromhex(magic)  # the writer follows the spec
    data = exact(images_path)
    assert data.x.shape == (7, 1, 5, 4)
    assert np.array_equal(data.x[:, 0].numpy(), images) and np.array_equal(data.y, labels)
    # Labels are optional: without the labels file the images still load.
    labels_path.unlink()
    assert exact(images_path).y is None


def test_idx_truncated_or_corrupt(tmp_path: Path) -> None:
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "t-images-idx3-ubyte", images, compress=False)
    full = (tmp_path / "t-images-idx3-ubyte").read_bytes()
    (tmp_path / "t-images-idx3-ubyte").write_bytes(full[:-5])
    with pytest.raises(ValueError, match=r"t-images-idx3-ubyte is truncated.*48 bytes.*found 43"):
        load_data(tmp_path / "t-images-idx3-ubyte")
    (tmp_path / "t-images-idx3-ubyte").write_bytes(full[:10])
    with pytest.raises(ValueError, match="truncated inside its header"):
        load_data(tmp_path / "t-images-idx3-ubyte")
    (tmp_path / "t-images-idx3-ubyte").write_bytes(b"\x01\x02" + full[2:])
    with pytest.raises(ValueError, match="not an IDX file: magic number 0x01020803"):
        load_data(tmp_path / "t-images-idx3-ubyte")
    (tmp_path / "z-images-idx3-ubyte.gz").write_bytes(gzip.compress(full)[:-12])
    with pytest.raises(ValueError, match=r"z-images-idx3-ubyte\.gz is a truncated or corrupt gzip"):
        load_data(tmp_path / "z-images-idx3-ubyte.gz")
    # A labels file whose count disagrees with the images.
    write_idx(tmp_path / "u-images-idx3-ubyte", images, compress=False)
    write_idx(tmp_path / "u-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8), compress=False)
    with pytest.raises(ValueError, match=r"u-labels-idx1-ubyte has shape \(2,\), expected \(3,\)"):
        load_data(tmp_path / "u-images-idx3-ubyte")


# ---------------------------------------------------------------------- image folders
def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_gray_two_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cats = [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(2)]
    dogs = [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(cats):
        save_png(tmp_path / "pets" / "cat" / f"{i}.png", a)
    for i, a in enumerate(dogs):
        save_png(tmp_path / "pets" / "dog" / f"{i}.png", a)
    data = exact(tmp_path / "pets")
    assert data.x.shape == (5, 1, 6, 5) and data.class_names == ("cat", "dog")
    assert data.y.tolist() == [0, 0, 1, 1, 1] and data.num_classes == 2
    assert np.array_equal(data.x[:, 0].numpy(), np.stack(cats + dogs))
    assert load_data(tmp_path / "pets").normalizer.max_value == 255


def test_image_folder_rgb_unlabelled(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
    for i, a in enumerate(rgb):
        save_png(tmp_path / "flat" / f"{i}.png", a)
    (tmp_path / "flat" / "notes.txt").write_text("ignored")
    data = exact(tmp_path / "flat")
    assert data.x.shape == (2, 3, 4, 3) and data.y is None
    assert np.array_equal(data.x.numpy(), rgb.transpose(0, 3, 1, 2))


def test_image_folder_mixed_sizes_names_both_files(tmp_path: Path) -> None:
    save_png(tmp_path / "imgs" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    save_png(tmp_path / "imgs" / "b.png", np.zeros((16, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"a\.png is 8x8 but .*b\.png is 8x16"):
        load_data(tmp_path / "imgs")


# ---------------------------------------------------------------------- bad input
def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'moonz'; did you mean 'moons'"):
        load_data("moonz")
    with pytest.raises(ValueError, match="built-in names: 8gaussians, checkerboard"):
        load_data("zzzzzz")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.npy"):
        load_data(tmp_path / "nothere.npy")


def test_csv_with_text_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("u,v,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 3, column 'v': 'oops' is not a number"):
        load_data(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match=r"ragged\.csv line 2: expected 2 columns, found 1"):
        load_data(tmp_path / "ragged.csv")


def test_nan_in_data_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match=r"nan\.npy has 1 non-finite"):
        load_data(tmp_path / "nan.npy")


def test_corrupt_and_unsafe_files(tmp_path: Path) -> None:
    (tmp_path / "junk.npy").write_bytes(b"not an array" * 5)
    with pytest.raises(ValueError, match=r"junk\.npy is not a readable \.npy"):
        load_data(tmp_path / "junk.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy is not a readable"):
        load_data(tmp_path / "objects.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable \.npz"):
        load_data(tmp_path / "junk.npz")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        load_data(tmp_path / "junk.pt")
    # An arbitrary pickled object is refused, never executed.
    torch.save({"x": torch.ones(2, 2), "path": Path("/")}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt holds objects other than tensors"):
        load_data(tmp_path / "obj.pt")
    np.savez(tmp_path / "keys.npz", features=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"no data array.*'x' or 'data' or 'arr_0'.*features"):
        load_data(tmp_path / "keys.npz")
    (tmp_path / "data.xyz").write_text("1 2")
    with pytest.raises(ValueError, match=r"unsupported data file .*data\.xyz"):
        load_data(tmp_path / "data.xyz")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(ValueError, match=r"broken\.png is not a readable image"):
        load_data(tmp_path / "imgs")


def test_bad_labels_and_arguments(tmp_path: Path) -> None:
    np.savez(tmp_path / "neg.npz", x=np.ones((2, 2)), y=np.array([0, -1]))
    with pytest.raises(ValueError, match=r"labels in .*neg\.npz must be non-negative integers"):
        load_data(tmp_path / "neg.npz")
    np.savez(tmp_path / "frac.npz", x=np.ones((2, 2)), y=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="must be non-negative integers"):
        load_data(tmp_path / "frac.npz")
    np.savez(tmp_path / "short.npz", x=np.ones((3, 2)), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"must have shape \(3,\), got \(2,\)"):
        load_data(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="n=2000 is larger than the 1797 samples in digits"):
        load_data("digits", n=2000)
    with pytest.raises(ValueError, match="n must be a positive int or None, got 0"):
        load_data("moons", n=0)
    with pytest.raises(ValueError, match="normalize must be 'auto' or one of"):
        load_data("moons", n=10, normalize="minmax")
    with pytest.raises(TypeError, match="name_or_path must be a str or a path, got int"):
        load_data(3)
    np.save(tmp_path / "neg_img.npy", -np.ones((2, 1, 2, 2)))
    with pytest.raises(ValueError, match="normalize='images' expects data in"):
        load_data(tmp_path / "neg_img.npy")


def test_normalizer_of_loaded_data_survives_json(tmp_path: Path) -> None:
    data = load_data("digits", n=50, generator=torch.Generator().manual_seed(1))
    back = Normalizer.from_dict(json.loads(json.dumps(data.normalizer.to_dict())))
    assert torch.equal(back.inverse(data.x), data.raw())
