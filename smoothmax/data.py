"""CIFAR-10 input pipeline: three source formats, a content-hash cache, batches, augmentation, sharding.

Sources, chosen by ``path`` alone:

1. the official ``cifar-10-python.tar.gz`` (pickled ``data_batch_1..5``, ``test_batch``, ``batches.meta``) or
   its extracted folder ``cifar-10-batches-py/``; with ``path=None`` and ``download=True`` it is fetched from
   its official address and checked against its published md5;
2. an image-folder tree ``train/<class>/*.png|jpg``, ``test/<class>/*`` as a folder or a ``.tgz``/``.tar.gz``;
3. :func:`synthetic`, generated from a seed with CIFAR-10's shapes.

Decoded arrays are cached as ``.npz`` keyed by the source's content hash, written atomically, so a second load
skips decoding and a failed load leaves nothing behind. Images stay uint8 NHWC on the host; normalisation and
augmentation run on device inside the jitted train step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from smoothmax.files import atomic_write_bytes

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SHAPE = (32, 32, 3)
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


class DatasetError(ValueError):
    """A dataset that is missing, corrupt or not laid out as expected; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``[N, 32, 32, 3]``, labels as int32 ``[N]``, and the class names in index order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean of the training images, in [0, 1]."""
        return self.train_images.reshape(-1, 3).mean(0, dtype=np.float64).astype(np.float32) / 255.0

    @property
    def std(self) -> np.ndarray:
        """Per-channel standard deviation of the training images, in [0, 1]."""
        return self.train_images.reshape(-1, 3).std(0, dtype=np.float64).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- loading and caching


def default_cache_dir() -> Path:
    return Path(os.environ.get("SMOOTHMAX_CACHE", Path.home() / ".cache" / "smoothmax"))


def load_cifar10(path=None, *, download: bool = True, cache_dir=None) -> Dataset:
    """Load CIFAR-10 from the official archive or folder, an image-folder tree or its ``.tgz``.

    Args:
      path: ``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, an image-folder tree or a ``.tgz`` of one.
        ``None`` means the official archive in ``cache_dir``, fetched first if ``download``.
      download: with ``path=None``, fetch the official archive when it is not in ``cache_dir`` yet.
      cache_dir: where decoded arrays (and a downloaded archive) live; ``$SMOOTHMAX_CACHE`` or
        ``~/.cache/smoothmax`` by default.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if path is None:
        path = cache_dir / "cifar-10-python.tar.gz"
        if not path.exists():
            if not download:
                raise DatasetError(
                    f"CIFAR-10 is not at {path} and download=False: set data.path (or path=) to a local "
                    "cifar-10-python.tar.gz, its cifar-10-batches-py folder, or an image-folder tree"
                )
            _download(CIFAR10_URL, path, CIFAR10_MD5)
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    key = content_hash(path)
    entry = cache_dir / f"cifar10-{key}"
    if entry.exists():
        try:
            return _read_cache(entry)
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(entry, ignore_errors=True)
    dataset = _decode(path)
    _write_cache(entry, dataset)
    return dataset


def _download(url: str, dest: Path, md5: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as err:
        raise DatasetError(
            f"could not download CIFAR-10 from {url} ({err}). Without network, download "
            "cifar-10-python.tar.gz elsewhere and point the config at it: --config.data.path=/path/to/"
            "cifar-10-python.tar.gz (an extracted cifar-10-batches-py folder or an image-folder tree works too)"
        ) from err
    got = hashlib.md5(data).hexdigest()
    if got != md5:
        raise DatasetError(f"download of {url} has md5 {got}, expected {md5}: not saved, try again")
    atomic_write_bytes(dest, data)


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's relative paths and file bytes in sorted order."""
    digest = hashlib.sha256(f"smoothmax-cifar10-v{_CACHE_FORMAT}".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _write_cache(cache_dir: Path, ds: Dataset) -> None:
    """One folder of plain ``.npy`` files, built beside its final name and renamed into place."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=f".{cache_dir.name}."))
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(ds, name))
        (tmp / "class_names.txt").write_text("\n".join(ds.class_names))
        os.replace(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_cache(cache_dir: Path) -> Dataset:
    arrays = {name: np.load(cache_dir / f"{name}.npy") for name in _ARRAYS}
    names = tuple((cache_dir / "class_names.txt").read_text().split("\n"))
    return Dataset(**arrays, class_names=names)


def _decode(path: Path) -> Dataset:
    if path.is_dir():
        official = next((d for d in (path, path / "cifar-10-batches-py") if (d / "batches.meta").exists()), None)
        if official is not None:
            return _from_pickles(lambda name: (official / name).read_bytes(), str(official))
        return _from_image_files(_folder_images(path), str(path))
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            names = {Path(m.name).name: m for m in members if m.isfile()}
            if "batches.meta" in names:
                return _from_pickles(lambda name: _tar_read(tar, names, name, path), str(path))
            return _from_image_files(_tar_images(tar, members), str(path))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path}: truncated or corrupt archive ({err})") from err


def _tar_read(tar, names, name, path):
    if name not in names:
        raise DatasetError(f"{path}: the official CIFAR-10 archive has no {name}")
    return tar.extractfile(names[name]).read()


def _unpickle(data: bytes, where: str) -> dict:
    try:
        return pickle.loads(data, encoding="bytes")
    except Exception as err:
        raise DatasetError(f"{where}: not a readable CIFAR-10 pickle ({err})") from err


def _from_pickles(read, where: str) -> Dataset:
    """Official python-format batches: rows of 3072 bytes (1024 R, 1024 G, 1024 B, row-major)."""
    try:
        meta = _unpickle(read("batches.meta"), f"{where}/batches.meta")
        class_names = tuple(n.decode() for n in meta[b"label_names"])

        def split(names):
            images, labels = [], []
            for name in names:
                batch = _unpickle(read(name), f"{where}/{name}")
                data = np.asarray(batch[b"data"], np.uint8)
                if data.ndim != 2 or data.shape[1] != 3072:
                    raise DatasetError(f"{where}/{name}: data has shape {data.shape}, expected [N, 3072]")
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[b"labels"], np.int32))
                if len(labels[-1]) != len(data):
                    raise DatasetError(f"{where}/{name}: {len(labels[-1])} labels for {len(data)} images")
            return np.concatenate(images), np.concatenate(labels)

        train = split([f"data_batch_{i}" for i in range(1, 6)])
        test = split(["test_batch"])
    except KeyError as err:
        raise DatasetError(f"{where}: CIFAR-10 pickle lacks the key {err}") from err
    except FileNotFoundError as err:
        raise DatasetError(f"{where}: missing file {err.filename}") from err
    for labels, split_name in ((train[1], "train"), (test[1], "test")):
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DatasetError(f"{where}: {split_name} labels outside [0, {len(class_names)})")
    return Dataset(train[0], train[1], test[0], test[1], class_names)


def _folder_images(root: Path):
    """``(path parts, read or None, name)`` for every image and every folder (an empty class shows up)."""
    for file in sorted(root.rglob("*")):
        parts = file.relative_to(root).parts
        if file.is_dir():
            yield parts + ("",), None, str(file)
        elif file.suffix.lower() in IMAGE_SUFFIXES:
            yield parts, (lambda file=file: file.read_bytes()), str(file)


def _tar_images(tar: tarfile.TarFile, members):
    for member in members:
        parts = tuple(p for p in Path(member.name).parts if p != ".")
        if member.isdir():
            yield parts + ("",), None, member.name
        elif Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
            yield parts, (lambda member=member: tar.extractfile(member).read()), member.name


def _class_order(names) -> tuple[str, ...]:
    names = set(names)
    if names == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(names))


def _from_image_files(items, where: str) -> Dataset:
    """``.../train/<class>/<image>`` and ``.../test/<class>/<image>`` (any prefix before the split)."""
    from PIL import Image

    decoded = {"train": {}, "test": {}}
    for parts, read, name in items:
        if len(parts) < 3 or parts[-3] not in decoded:
            continue
        split, cls = parts[-3], parts[-2]
        images = decoded[split].setdefault(cls, [])
        if read is None:  # a class folder itself
            continue
        try:
            with Image.open(io.BytesIO(read())) as img:
                img.load()
                array = np.asarray(img.convert("RGB"), np.uint8)
        except Exception as err:
            raise DatasetError(f"{name}: unreadable image ({err})") from err
        if array.shape != IMAGE_SHAPE:
            raise DatasetError(f"{name}: image is {array.shape[1]}x{array.shape[0]}, expected 32x32")
        images.append(array)
    if not decoded["train"] or not decoded["test"]:
        missing = [s for s in ("train", "test") if not decoded[s]]
        raise DatasetError(
            f"{where}: no images under {' or '.join(missing)}/<class>/: expected train/<class>/*.png|jpg "
            "and test/<class>/*, or the official cifar-10-python archive"
        )
    if set(decoded["train"]) != set(decoded["test"]):
        only_train = sorted(set(decoded["train"]) - set(decoded["test"]))
        only_test = sorted(set(decoded["test"]) - set(decoded["train"]))
        raise DatasetError(
            f"{where}: class folders differ between train and test (only in train: {only_train}, "
            f"only in test: {only_test})"
        )
    classes = _class_order(decoded["train"])
    arrays = []
    for split in ("train", "test"):
        images, labels = [], []
        for index, cls in enumerate(classes):
            if not decoded[split][cls]:
                raise DatasetError(f"{where}: class folder {split}/{cls} is empty")
            images.extend(decoded[split][cls])
            labels.extend([index] * len(decoded[split][cls]))
        arrays += [np.stack(images), np.asarray(labels, np.int32)]
    return Dataset(*arrays, class_names=classes)


def subset(ds: Dataset, num_train: int, seed: int = 0) -> Dataset:
    """The same dataset with a fixed random ``num_train`` of its training images (the test set whole)."""
    if not 0 < num_train <= len(ds.train_labels):
        raise ValueError(f"train subset of {num_train} images: the dataset has {len(ds.train_labels)}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(ds.train_labels))[:num_train])
    return dataclasses.replace(ds, train_images=ds.train_images[keep], train_labels=ds.train_labels[keep])


# --------------------------------------------------------------------------- the synthetic set


def synthetic(*, seed: int = 0, num_train: int = 10_000, num_test: int = 2_000, difficulty: float = 0.5,
              num_classes: int = 10) -> Dataset:
    """A learnable, not trivial, CIFAR-shaped set generated from ``seed``, so nothing needs a download.

    Each class is a smooth random colour pattern; an image is its class pattern, shifted by up to 4 pixels,
    scaled in contrast, blended with a random other class's pattern and covered in pixel noise. ``difficulty``
    in [0, 1] sets the blend weight and the noise: 0 is easy, 1 leaves little signal.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((num_classes, 4, 4, 3))
    # Bilinear upsampling of a 4x4 grid to 40x40 gives smooth blobs; crops of it give the shifts.
    grid = np.linspace(0, 3, 40)
    lo = np.floor(grid).astype(int).clip(0, 2)
    frac = (grid - lo)[:, None]
    rows = coarse[:, lo] * (1 - frac[None, :, :, None]) + coarse[:, lo + 1] * frac[None, :, :, None]
    patterns = rows[:, :, lo] * (1 - frac[None, None, :, :]) + rows[:, :, lo + 1] * frac[None, None, :, :]
    patterns /= patterns.std(axis=(1, 2, 3), keepdims=True)

    def make(n, split_seed):
        r = np.random.default_rng([seed, split_seed])
        labels = r.integers(0, num_classes, n).astype(np.int32)
        others = (labels + r.integers(1, num_classes, n)) % num_classes
        dy, dx = r.integers(0, 9, (2, n))
        idx_y = dy[:, None] + np.arange(32)[None]
        idx_x = dx[:, None] + np.arange(32)[None]
        own = patterns[labels[:, None, None], idx_y[:, :, None], idx_x[:, None, :]]
        other = patterns[others[:, None, None], idx_y[:, :, None], idx_x[:, None, :]]
        blend = 0.6 * difficulty * r.uniform(0.5, 1.0, (n, 1, 1, 1))
        contrast = r.uniform(0.6, 1.4, (n, 1, 1, 1))
        noise = r.standard_normal((n, 32, 32, 3)) * (0.3 + 1.7 * difficulty)
        images = 128 + 40 * (contrast * ((1 - blend) * own + blend * other) + noise)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    train_images, train_labels = make(num_train, 1)
    test_images, test_labels = make(num_test, 2)
    names = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes))
    return Dataset(train_images, train_labels, test_images, test_labels, names)


# --------------------------------------------------------------------------- batches


def epoch_permutation(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Indices of one epoch's full training batches, ``[steps, batch_size]``: a fresh shuffle per epoch."""
    if batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    steps = num_examples // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def eval_batches(num_examples: int, batch_size: int):
    """Yield ``(indices, mask)`` covering every example once; the last batch is padded and masked."""
    for start in range(0, num_examples, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < num_examples
        yield np.where(mask, idx, 0), mask


# --------------------------------------------------------------------------- augmentation (on device)


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 NHWC images to float32, standardised per channel."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Per example: a random crop from ``pad``-pixel reflect padding, and a random horizontal flip.

    Runs inside the jitted step; the same key gives the same batch.
    """
    n, h, w, _ = images.shape
    key_y, key_x, key_f = jax.random.split(key, 3)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy = jax.random.randint(key_y, (n,), 0, 2 * pad + 1)
    dx = jax.random.randint(key_x, (n,), 0, 2 * pad + 1)
    # Crops as two one-axis gathers: cheaper on XLA:CPU than a per-example dynamic_slice.
    rows = dy[:, None] + jnp.arange(h)[None]
    cols = dx[:, None] + jnp.arange(w)[None]
    flip = jax.random.bernoulli(key_f, 0.5, (n,))
    cols = jnp.where(flip[:, None], cols[:, ::-1], cols)
    cropped = jnp.take_along_axis(padded, rows[:, :, None, None], axis=1)
    return jnp.take_along_axis(cropped, cols[:, None, :, None], axis=2)


# --------------------------------------------------------------------------- sharding


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``("data",)`` mesh over all (global) devices: batches are split along it."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def host_indices(global_indices: np.ndarray) -> np.ndarray:
    """This host's contiguous part of a global batch's indices (all of it on a single host)."""
    hosts, me = jax.process_count(), jax.process_index()
    if len(global_indices) % hosts:
        raise ValueError(f"batch of {len(global_indices)} does not split over {hosts} hosts")
    per_host = len(global_indices) // hosts
    return global_indices[me * per_host : (me + 1) * per_host]


def shard_batch(mesh: Mesh, *local_arrays: np.ndarray):
    """Place this host's part of a batch on its devices as one global array split along ``data``.

    Every host passes only the rows it read (see :func:`host_indices`).
    """
    sharding = batch_sharding(mesh)
    out = tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in local_arrays)
    return out if len(out) > 1 else out[0]
