"""Reading a user's data from disk: arrays, CSV tables, MNIST-format IDX files, image folders.

Every reader returns a :class:`RawData` (a numpy array ``(N, *event_shape)``, optional integer
labels ``(N,)``, class names, and the value range an 8-bit source implies). Nothing is ever
unpickled: ``.npy``/``.npz`` load with ``allow_pickle=False`` and ``.pt`` with
``torch.load(weights_only=True)``. A missing file raises ``FileNotFoundError``; an unreadable or
malformed one a ``ValueError`` that names the file (and the row/column, byte count or pair of
images at fault).
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["RawData", "read_csv_table", "read_file", "read_idx"]

X_KEYS = ("x", "data", "arr_0")  # array names tried, in order, in a .npz or a .pt dict
LABEL_KEYS = ("y", "labels")
LABEL_COLUMNS = ("label", "y")  # CSV header names (case-insensitive) that hold labels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_NAME = re.compile(r"idx\d+-ubyte(\.gz)?$")
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class RawData:
    """What a reader found. ``value_max`` is 255 for 8-bit sources (PNG, uint8 arrays), where
    the ``[0, 255]`` range is known a priori, and ``None`` when the data's own maximum applies."""

    x: np.ndarray
    y: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    value_max: float | None = None


def is_idx_name(path: Path) -> bool:
    """Whether ``path`` is named like an IDX file (``*-idx3-ubyte``, ``*.idx1-ubyte.gz``, ...)."""
    return bool(_IDX_NAME.search(path.name))


def read_file(path: str | os.PathLike) -> RawData:
    """Read ``path`` by its type: a folder of images, an IDX file, ``.npy``, ``.npz``, ``.pt``,
    or ``.csv``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return read_image_folder(path)
    if is_idx_name(path):
        return read_idx_dataset(path)
    readers = {".npy": _read_npy, ".npz": _read_npz, ".pt": _read_pt, ".pth": _read_pt}
    suffix = path.suffix.lower()
    if suffix in readers:
        return readers[suffix](path)
    if suffix == ".csv":
        return _read_csv_data(path)
    raise ValueError(
        f"unsupported data file {path} (expected .npy, .npz, .pt, .csv, an MNIST-format "
        "'*-idx3-ubyte[.gz]' file or a folder of PNG/JPG images)"
    )


# ---------------------------------------------------------------------- arrays
def _numeric(array: object, path: Path, what: str) -> np.ndarray:
    """``array`` as a real numeric numpy array, else a ``ValueError`` naming the file."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} in {path} must be real numbers, got dtype {array.dtype}")
    return array


def _with_range(x: np.ndarray, y: np.ndarray | None = None) -> RawData:
    return RawData(x, y, value_max=255.0 if x.dtype == np.uint8 else None)


def _pick(found: dict[str, object], keys: Sequence[str], path: Path, required: bool) -> object:
    for key in keys:
        if key in found:
            return found[key]
    if required:
        raise ValueError(
            f"{path} has no data array: expected one named {' or '.join(map(repr, keys))}, "
            f"found {sorted(found)}"
        )
    return None


def _read_npy(path: Path) -> RawData:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array: {err}") from err
    return _with_range(_numeric(array, path, "the array"))


def _read_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz archive: {err}") from err
    x = _numeric(_pick(found, X_KEYS, path, required=True), path, "the data")
    y = _pick(found, LABEL_KEYS, path, required=False)
    return _with_range(x, None if y is None else _numeric(y, path, "the labels"))


def _read_pt(path: Path) -> RawData:
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers, or is corrupt; "
            "only a tensor or a dict of tensors is loaded (nothing is unpickled)"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path} is not a readable .pt tensor file: {first_line}") from err
    if isinstance(obj, torch.Tensor):
        return _with_range(_numeric(obj, path, "the tensor"))
    if isinstance(obj, dict):
        x = _numeric(_pick(obj, X_KEYS, path, required=True), path, "the data")
        y = _pick(obj, LABEL_KEYS, path, required=False)
        return _with_range(x, None if y is None else _numeric(y, path, "the labels"))
    raise ValueError(f"{path} must hold a tensor or a dict of tensors, got {type(obj).__name__}")


# ---------------------------------------------------------------------- CSV
def read_csv_table(
    path: str | os.PathLike, *, allow_empty: bool = False
) -> tuple[list[str] | None, np.ndarray]:
    """Parse a numeric CSV into ``(header or None, values (rows, columns) float64)``.

    The first row is a header when any of its cells is not a number. Every other cell must be a
    number (an empty cell becomes NaN when ``allow_empty``); otherwise a ``ValueError`` names the
    file, the line, the column and the cell.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with open(path, newline="") as fh:
            rows = [(line, row) for line, row in enumerate(csv.reader(fh), 1) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path} is not a readable CSV file: {err}") from err
    if not rows:
        raise ValueError(f"{path} is empty")

    def number(cell: str) -> float | None:
        try:
            return float(cell)
        except ValueError:
            return None

    header = None
    if any(number(cell) is None for cell in rows[0][1]):
        header = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{path} line {line}: expected {width} columns, found {len(row)}")
        for j, cell in enumerate(row):
            value = number(cell)
            if value is None and not (allow_empty and cell.strip() == ""):
                column = repr(header[j]) if header is not None else str(j + 1)
                raise ValueError(f"{path} line {line}, column {column}: {cell!r} is not a number")
            values[i, j] = math.nan if value is None else value
    return header, values


def _read_csv_data(path: Path) -> RawData:
    header, values = read_csv_table(path)
    label_cols = (
        []
        if header is None
        else [j for j, name in enumerate(header) if name.lower() in LABEL_COLUMNS]
    )
    if len(label_cols) > 1:
        raise ValueError(
            f"{path} has more than one label column: {[header[j] for j in label_cols]}"
        )
    if not label_cols:
        return RawData(values)
    keep = [j for j in range(values.shape[1]) if j != label_cols[0]]
    if not keep:
        raise ValueError(f"{path} has a label column but no data columns")
    return RawData(values[:, keep], values[:, label_cols[0]])


# ---------------------------------------------------------------------- IDX (MNIST format)
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not) into an array of its declared shape.

    Layout: 2 zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D
    float32, 0x0E float64), a byte ``ndim``, ``ndim`` big-endian uint32 sizes, then the values
    in C order, big-endian. The magic number, the type, and the exact data length are checked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{path} is a truncated or corrupt gzip file: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, shorter than an IDX header")
    zeros, type_code, ndim = raw[:2], raw[2], raw[3]
    if zeros != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path} is not an IDX file: magic number 0x{raw[:4].hex()} (expected 0x0000TTNN with "
            f"type TT in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{path} is truncated inside its header ({len(raw)} of {header_len} bytes)"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        state = "truncated" if found < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {state}: dimensions {dims} need {expected} bytes of data, found {found}"
        )
    # Native byte order so torch can take the array.
    return (
        np.frombuffer(raw, dtype=dtype, offset=header_len)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def _idx_labels_path(images: Path) -> Path | None:
    """The labels file that goes with an images file (``images-idx3`` -> ``labels-idx1``)."""
    stem = _IDX_NAME.sub("", images.name)
    if "images" not in stem:
        return None
    base = stem.replace("images", "labels") + "idx1-ubyte"
    for name in (base, base + ".gz"):
        if (images.parent / name).is_file():
            return images.parent / name
    return None


def read_idx_dataset(path: Path) -> RawData:
    """An IDX images file ``(N, H, W)`` as ``(N, 1, H, W)``, with its labels file when present."""
    x = read_idx(path)
    if x.ndim == 3:  # MNIST-style grayscale images: add the channel axis
        x = x[:, None]
    labels_path = _idx_labels_path(path)
    y = None
    if labels_path is not None:
        y = read_idx(labels_path)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"labels file {labels_path} has shape {y.shape}, expected ({x.shape[0]},) to "
                f"match {path}"
            )
    return _with_range(x, y)


# ---------------------------------------------------------------------- image folders
def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_image_folder(folder: Path) -> RawData:
    """PNG/JPG images ``(N, C, H, W)`` uint8; labels from the names of the subfolders, if any.

    ``C = 1`` when every image is grayscale (PIL modes ``1``, ``L``, ``LA``), else every image
    is converted to RGB (``C = 3``; alpha is dropped). All images must share one size.
    """
    from PIL import Image, UnidentifiedImageError

    classes = sorted(
        d.name
        for d in folder.iterdir()
        if d.is_dir() and not d.name.startswith(".") and _images_in(d)
    )
    top_level = [p for p in _images_in(folder) if p.parent == folder]
    if classes and top_level:
        raise ValueError(
            f"{folder} mixes images at its top level ({top_level[0].name}) with class subfolders "
            f"({', '.join(classes)}); put every image in a class folder, or none"
        )
    if classes:
        files = [
            (p, label) for label, name in enumerate(classes) for p in _images_in(folder / name)
        ]
    else:
        files = [(p, -1) for p in top_level]
    if not files:
        raise ValueError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")

    images: list[Image.Image] = []
    for p, _ in files:
        try:
            with Image.open(p) as img:
                img.load()
                images.append(img)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{p} is not a readable image: {err}") from err
        if img.size != images[0].size:
            (w0, h0), (w, h) = images[0].size, img.size
            raise ValueError(
                f"images in {folder} have different sizes: {files[0][0]} is {w0}x{h0} but {p} is "
                f"{w}x{h} (width x height); resize them to one size first"
            )
    gray = all(img.mode in ("1", "L", "LA") for img in images)
    mode, channels = ("L", 1) if gray else ("RGB", 3)
    arrays = [
        np.asarray(img.convert(mode), dtype=np.uint8).reshape(*img.size[::-1], channels)
        for img in images
    ]
    x = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    y = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return RawData(x, y, tuple(classes) if classes else None, value_max=255.0)
