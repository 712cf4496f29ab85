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
import functools
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.request
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

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
_CACHE_FORMAT = 2  # bump when what a source decodes to changes (2: dot-files skipped, official layout at the root)


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

    @functools.cached_property
    def _channel_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation of the training images, in [0, 1], from each channel's
        histogram of the 256 pixel values: exact, one pass, and once per dataset (every program lookup reads
        them, and recomputing them there cost a float64 pass over every pixel each time)."""
        values = np.arange(256, dtype=np.float64)
        counts = np.stack([np.bincount(self.train_images[..., c].ravel(), minlength=256) for c in range(3)])
        counts = counts.astype(np.float64) / counts.sum(axis=1, keepdims=True)
        mean = counts @ values
        std = np.sqrt(np.maximum(counts @ values**2 - mean**2, 0.0))
        return mean.astype(np.float32) / 255.0, std.astype(np.float32) / 255.0

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean of the training images, in [0, 1]."""
        return self._channel_moments[0]

    @property
    def std(self) -> np.ndarray:
        """Per-channel standard deviation of the training images, in [0, 1]."""
        return self._channel_moments[1]


# --------------------------------------------------------------------------- loading and caching

SOURCE_ENV = "SMOOTHMAX_CIFAR10"
OFFICIAL_DIR = "cifar-10-batches-py"
_OFFICIAL_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_SPLITS = ("train", "test")
# Caps checked before a byte is decoded. An official batch pickle is 31 MB, the official archive 178 MB
# uncompressed, the JPEG copy 93 MB; a 32x32 image in any of our formats is a few KB.
_MAX_PICKLE_BYTES = 256 << 20
_MAX_IMAGE_BYTES = 1 << 20
_MAX_ARCHIVE_BYTES = 1 << 30
_PIL_FORMATS = ("PNG", "JPEG", "BMP")  # by content, whatever the suffix: no other PIL decoder ever runs


def default_cache_dir() -> Path:
    return Path(os.environ.get("SMOOTHMAX_CACHE", Path.home() / ".cache" / "smoothmax"))


def resolve_source(path) -> Path | None:
    """The local copy a config names: ``path``, else ``$SMOOTHMAX_CIFAR10``; ``None`` is the official download.

    The one place that reads the environment variable: the loader and a run's identity (which names the data
    by :func:`content_hash` of this path) both call it, so they agree on the files.
    """
    path = (os.fspath(path) if path is not None else "") or os.environ.get(SOURCE_ENV, "")
    return Path(path).expanduser() if path else None


def load_cifar10(path=None, *, download: bool = True, cache_dir=None) -> Dataset:
    """Load CIFAR-10 from the official archive or folder, an image-folder tree or its ``.tgz``.

    Args:
      path: ``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, an image-folder tree or a ``.tgz`` of one.
        ``None`` or ``""``: ``$SMOOTHMAX_CIFAR10`` if set, else the official archive in ``cache_dir``, fetched
        first if ``download`` and md5-checked before every use.
      download: fetch the official archive when it is not in ``cache_dir`` yet.
      cache_dir: where decoded arrays (and a downloaded archive) live; ``$SMOOTHMAX_CACHE`` or
        ``~/.cache/smoothmax`` by default.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = resolve_source(path)
    if source is None:
        source = _official_archive(cache_dir, download)
        # Its md5 was just checked, so the md5 names its entry: the archive is not read a second time.
        key = f"official-v{_CACHE_FORMAT}-{CIFAR10_MD5}"
    elif not source.exists():
        named_by = "" if path else f" (named by ${SOURCE_ENV})"
        raise DatasetError(f"dataset path {source}{named_by} does not exist")
    else:
        key = content_hash(source)
    entry = cache_dir / f"cifar10-{key}"
    if entry.exists():
        try:
            return _read_cache(entry)
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(entry, ignore_errors=True)
    dataset = _decode(source)
    _write_cache(entry, dataset)
    return dataset


def _official_archive(cache_dir: Path, download: bool) -> Path:
    """``cache_dir/cifar-10-python.tar.gz``, fetched if missing; its md5 is checked on every load, as anything
    may have written or truncated that file since."""
    path = cache_dir / "cifar-10-python.tar.gz"
    if not path.exists():
        if not download:
            raise DatasetError(
                f"CIFAR-10 is not at {path} and download=False: set data.path (or path=, or ${SOURCE_ENV}) to a "
                "local cifar-10-python.tar.gz, its cifar-10-batches-py folder, or an image-folder tree"
            )
        _download(CIFAR10_URL, path, CIFAR10_MD5)
    got = _hash_file(hashlib.md5(), path).hexdigest()
    if got != CIFAR10_MD5:
        raise DatasetError(
            f"{path} has md5 {got}, not the official archive's {CIFAR10_MD5} (partial or altered): delete it to "
            f"download it again, or name a local copy with data.path or ${SOURCE_ENV}"
        )
    return path


def _download(url: str, dest: Path, md5: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as err:
        raise DatasetError(
            f"could not download CIFAR-10 from {url} ({err}). Without network, download "
            "cifar-10-python.tar.gz elsewhere and point the config at it: --config.data.path=/path/to/"
            f"cifar-10-python.tar.gz or ${SOURCE_ENV} (an extracted cifar-10-batches-py folder or an "
            "image-folder tree works too)"
        ) from err
    got = hashlib.md5(data).hexdigest()
    if got != md5:
        raise DatasetError(f"download of {url} has md5 {got}, expected {md5}: not saved, try again")
    atomic_write_bytes(dest, data)


def _hash_file(digest, path: Path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def content_hash(path) -> str:
    """A digest of exactly the bytes :func:`load_cifar10` decodes from ``path`` (a resolved source).

    An archive: all its bytes. A folder: each file the decoder reads, the official batch files or the images
    under ``train|test/<class>/``, with its relative path and size; stray files and dot-files do not count.
    """
    path = Path(path)
    digest = hashlib.sha256(f"smoothmax-cifar10-v{_CACHE_FORMAT}".encode())
    if not path.is_dir():
        return _hash_file(digest, path).hexdigest()[:32]
    official = _official_files(path)
    files = official.values() if official is not None else filter(_is_image, _folder_entries(path))
    for entry in files:
        digest.update(f"{'/'.join(entry.parts)}\0{entry.size}\0".encode())
        _hash_file(digest, Path(entry.name))
    return digest.hexdigest()[:32]


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _write_cache(entry: Path, ds: Dataset) -> None:
    """One folder of plain ``.npy`` files, built beside its final name and renamed into place.

    Processes filling one entry at once each build their own folder from the same bytes; the first rename
    wins, and the others (whose rename onto a full folder fails) keep the winner's entry and drop theirs.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.{uuid.uuid4().hex}"
    tmp.mkdir()  # not mkdtemp, which makes 0700 folders: the entry honours the umask like its files
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(ds, name))
        (tmp / "class_names.txt").write_text("\n".join(ds.class_names))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(entry: Path) -> Dataset:
    arrays = {name: np.load(entry / f"{name}.npy") for name in _ARRAYS}  # allow_pickle=False, numpy's default
    names = tuple((entry / "class_names.txt").read_text().split("\n"))
    return Dataset(**arrays, class_names=names)


# --------------------------------------------------------------------------- decoding untrusted sources


class _Entry(NamedTuple):
    """A file or folder of a source: its path parts below the source's root (a folder's last part is ""), a
    name for messages, and for a regular file its size and a reader (links, pipes and devices have none)."""

    parts: tuple[str, ...]
    name: str
    size: int = 0
    read: Callable[[], bytes] | None = None


def _hidden(parts) -> bool:
    """Dot-files, AppleDouble ``._*`` files and anything in a dot-folder: never read, never counted."""
    return any(part.startswith(".") for part in parts)


def _split_and_class(parts) -> tuple[str, str] | None:
    """``(split, class)`` of an entry at ``.../train|test/<class>/<name>`` (any prefix before the split)."""
    return (parts[-3], parts[-2]) if len(parts) >= 3 and parts[-3] in _SPLITS else None


def _is_image(entry: _Entry) -> bool:
    """The files the image-tree decoder reads, and so the files :func:`content_hash` covers."""
    return (entry.read is not None and Path(entry.parts[-1]).suffix.lower() in IMAGE_SUFFIXES
            and _split_and_class(entry.parts) is not None)


def _file_entry(file: Path, parts) -> _Entry:
    return _Entry(tuple(parts), str(file), file.stat().st_size, file.read_bytes)


def _folder_entries(root: Path) -> list[_Entry]:
    entries = []
    for file in sorted(root.rglob("*")):
        parts = file.relative_to(root).parts
        if _hidden(parts):
            continue
        if file.is_dir():
            entries.append(_Entry(parts + ("",), str(file)))
        else:
            entries.append(_file_entry(file, parts) if file.is_file() else _Entry(parts, str(file)))
    return entries


def _official_files(root: Path) -> dict[str, _Entry] | None:
    """The batch files of an official ``cifar-10-batches-py`` folder given as itself or as its parent."""
    for folder in (root, root / OFFICIAL_DIR):
        if (folder / "batches.meta").is_file():
            files = [folder / name for name in _OFFICIAL_FILES]
            return {f.name: _file_entry(f, (f.name,)) for f in files if f.is_file()}
    return None


def _tar_entries(tar: tarfile.TarFile, where: str) -> list[_Entry]:
    """Every member but dot-files. Sizes are checked as headers are read, so a bomb stops at its header."""
    entries = []
    for member in tar:
        if member.offset_data + member.size > _MAX_ARCHIVE_BYTES:
            raise DatasetError(
                f"{where}: {member.name} reaches past {_MAX_ARCHIVE_BYTES >> 20} MiB uncompressed, far more than "
                "CIFAR-10 (a decompression bomb?): refused before decompressing it"
            )
        parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
        if not parts or _hidden(parts):
            continue
        if member.isdir():
            entries.append(_Entry(parts + ("",), member.name))
        elif member.isfile():
            entries.append(_Entry(parts, member.name, member.size, lambda m=member: tar.extractfile(m).read()))
        else:
            entries.append(_Entry(parts, member.name))
    return entries


def _read(entry: _Entry, cap: int, what: str) -> bytes:
    if entry.size > cap:
        raise DatasetError(f"{entry.name}: {entry.size} bytes, more than the {cap / 2**20:g} MiB any {what} needs")
    return entry.read()


def _decode(path: Path) -> Dataset:
    """Official batches if ``cifar-10-batches-py/`` is the folder, in it, or at the archive's root; else images."""
    if path.is_dir():
        official = _official_files(path)
        if official is not None:
            return _from_pickles(official, str(path))
        return _from_image_files(_folder_entries(path), str(path))
    try:
        with tarfile.open(path, "r:*") as tar:
            entries = _tar_entries(tar, str(path))
            official = {e.parts[1]: e for e in entries
                        if len(e.parts) == 2 and e.parts[0] == OFFICIAL_DIR and e.read is not None}
            if "batches.meta" in official:
                return _from_pickles(official, str(path))
            return _from_image_files(entries, str(path))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path}: truncated or corrupt archive ({err})") from err


# numpy's array-unpickling function, under whichever module name this numpy keeps it.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


def _latin1_bytes(text, encoding):
    """``_codecs.encode`` as Python 3's pickle protocol 2 uses it, and only so: a ``bytes`` object is written as
    its latin-1 text and this call. Any other codec (zlib, base64, ...) or argument is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): a CIFAR-10 "
                                     "batch only encodes text as latin-1 bytes")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's batches hold: dicts, lists, bytes, str, ints and numpy arrays.

    Every global a pickle names (the only way a pickle runs code) passes ``find_class``; a batch names numpy's
    array constructor and nothing else, and a batch re-saved by Python 3 with protocol 2 also names
    ``_codecs.encode`` for each bytes object (allowed as latin-1 text to bytes only).
    """

    _GLOBALS = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module, name):
        try:
            return self._GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: no CIFAR-10 batch holds it") from None


_PLAIN = (dict, list, bytes, str, int, np.ndarray)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:
        raise DatasetError(f"{where}: not a readable CIFAR-10 pickle ({' '.join(str(err).split())})") from err
    seen, stack = set(), [batch]
    while stack:  # the types a batch holds, arrays of numbers only (no object arrays)
        item = stack.pop()
        if not isinstance(item, _PLAIN) or isinstance(item, np.ndarray) and item.dtype.kind not in "biuf":
            kind = f"an array of dtype {item.dtype}" if isinstance(item, np.ndarray) else type(item).__name__
            raise DatasetError(f"{where}: holds {kind}, which no CIFAR-10 batch holds")
        if isinstance(item, (dict, list)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
    if not isinstance(batch, dict):
        raise DatasetError(f"{where}: holds a {type(batch).__name__}, not a CIFAR-10 batch's dict")
    return batch


def _from_pickles(files: dict[str, _Entry], where: str) -> Dataset:
    """Official python-format batches: rows of 3072 bytes (1024 R, 1024 G, 1024 B, row-major)."""

    def load(name):
        if name not in files:
            raise DatasetError(f"{where}: the official CIFAR-10 layout has no {name}")
        return _unpickle(_read(files[name], _MAX_PICKLE_BYTES, "CIFAR-10 batch"), f"{where}/{name}")

    names = _field(load("batches.meta"), b"label_names", f"{where}/batches.meta")
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise DatasetError(f"{where}/batches.meta: label_names is not a list of byte strings")
    class_names = tuple(n.decode("utf-8", "replace") for n in names)

    def split(batch_names):
        images, labels = [], []
        for name in batch_names:
            batch = load(name)
            data = _field(batch, b"data", f"{where}/{name}")
            label = np.asarray(_field(batch, b"labels", f"{where}/{name}"))
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DatasetError(f"{where}/{name}: data is not a uint8 array [N, 3072]")
            if label.shape != (len(data),) or label.size and label.dtype.kind not in "iu":
                raise DatasetError(f"{where}/{name}: labels are not {len(data)} integers, one per image")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(label.astype(np.int64))
        labels = np.concatenate(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DatasetError(f"{where}: labels outside [0, {len(class_names)}) in {', '.join(batch_names)}")
        return np.concatenate(images), labels.astype(np.int32)

    train = split([f"data_batch_{i}" for i in range(1, 6)])
    test = split(["test_batch"])
    return Dataset(*train, *test, class_names)


def _field(batch: dict, key: bytes, where: str):
    if key not in batch:
        raise DatasetError(f"{where}: CIFAR-10 pickle lacks the key {key!r}")
    return batch[key]


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """One 32x32 image; its size is read from the header and checked before any pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
            if img.size != IMAGE_SHAPE[1::-1]:
                raise DatasetError(f"{name}: image is {img.width}x{img.height}, expected 32x32")
            img.load()
            return np.asarray(img.convert("RGB"), np.uint8)
    except DatasetError:
        raise
    except Exception as err:  # PIL's DecompressionBombError for headers past its pixel limit, too
        raise DatasetError(f"{name}: unreadable image ({err})") from err


def _from_image_files(entries: list[_Entry], where: str) -> Dataset:
    """``.../train/<class>/<image>`` and ``.../test/<class>/<image>`` (any prefix before the split)."""
    decoded = {split: {} for split in _SPLITS}
    skipped = []
    for entry in entries:
        role = _split_and_class(entry.parts)
        if entry.parts[-1] == "":  # a folder: a class folder counts even when empty
            if role is not None:
                decoded[role[0]].setdefault(role[1], [])
        elif not _is_image(entry):
            skipped.append(entry.name)
        else:
            image = _decode_image(_read(entry, _MAX_IMAGE_BYTES, "32x32 image"), entry.name)
            decoded[role[0]].setdefault(role[1], []).append(image)
    if skipped:
        warnings.warn(
            f"{where}: skipped {len(skipped)} files that are not regular {'/'.join(IMAGE_SUFFIXES)} files under "
            f"train|test/<class>/ (first: {skipped[0]})",
            stacklevel=4,  # the caller of load_cifar10
        )
    return _stack_classes(decoded, where)


def _stack_classes(decoded: dict, where: str) -> Dataset:
    if not decoded["train"] or not decoded["test"]:
        missing = [s for s in _SPLITS if not decoded[s]]
        raise DatasetError(
            f"{where}: no images under {' or '.join(missing)}/<class>/: expected train/<class>/*.png|jpg "
            f"and test/<class>/*, or the official archive's {OFFICIAL_DIR}/ at its root"
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
    for split in _SPLITS:
        images, labels = [], []
        for index, cls in enumerate(classes):
            if not decoded[split][cls]:
                raise DatasetError(f"{where}: class folder {split}/{cls} is empty")
            images.extend(decoded[split][cls])
            labels.extend([index] * len(decoded[split][cls]))
        arrays += [np.stack(images), np.asarray(labels, np.int32)]
    return Dataset(*arrays, class_names=classes)


def _class_order(names) -> tuple[str, ...]:
    names = set(names)
    if names == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(names))


def subset(ds: Dataset, num_train: int, seed: int = 0) -> Dataset:
    """The same dataset with a fixed random ``num_train`` of its training images (the test set whole)."""
    if not 0 < num_train <= len(ds.train_labels):
        raise ValueError(f"train subset of {num_train} images: the dataset has {len(ds.train_labels)}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(ds.train_labels))[:num_train])
    return dataclasses.replace(ds, train_images=ds.train_images[keep], train_labels=ds.train_labels[keep])


# The seed of the validation split. Fixed, not data.seed: every run of a study (every seed, objective and
# learning rate) chooses on the same held-out images.
VALIDATION_SEED = 0


def hold_out(ds: Dataset, size: int) -> tuple[Dataset, tuple[np.ndarray, np.ndarray] | None]:
    """Split ``size`` training images off for validation: stratified (each class keeps its share, largest
    remainders rounded up), the same images for every run. Returns the dataset without them, and
    ``(images, labels)`` of the validation split (None for ``size = 0``)."""
    if size == 0:
        return ds, None
    labels = ds.train_labels
    if not 0 < size < len(labels):
        raise ValueError(f"a validation split of {size} images: the training set has {len(labels)}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = size * counts / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota)[: size - take.sum()]] += 1  # largest remainders first
    rng = np.random.default_rng(VALIDATION_SEED)
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)])
    keep = np.ones(len(labels), bool)
    keep[held] = False
    held = np.sort(held)
    rest = dataclasses.replace(ds, train_images=ds.train_images[keep], train_labels=labels[keep])
    return rest, (ds.train_images[held], labels[held])


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


def epoch_flips(num_examples: int, seed: int, epoch: int, alternate: bool = False) -> np.ndarray:
    """Which training examples are mirrored in ``epoch``: a fresh coin per example and epoch, or with
    ``alternate`` the first epoch's coin, inverted in odd epochs (airbench's derandomised flips: over any two
    epochs every image is seen both ways).

    Decided on the host, like the batch order, so that a mirror is a pure function of (seed, epoch, example)
    whatever the batch size or the number of hosts.
    """
    coin = np.random.default_rng([seed, 0 if alternate else epoch, 1]).random(num_examples) < 0.5
    return coin ^ bool(alternate and epoch % 2)


def augment(key: jax.Array, images: jax.Array, flips: jax.Array, pad: int = 4) -> jax.Array:
    """Per example: a random crop from ``pad``-pixel reflect padding (none at 0), mirrored where ``flips``.

    Runs inside the jitted step; the same key and flips give the same batch.
    """
    n, h, w, _ = images.shape
    rows, cols = jnp.broadcast_to(jnp.arange(h), (n, h)), jnp.broadcast_to(jnp.arange(w), (n, w))
    if pad:
        key_y, key_x = jax.random.split(key)
        images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        rows = rows + jax.random.randint(key_y, (n, 1), 0, 2 * pad + 1)
        cols = cols + jax.random.randint(key_x, (n, 1), 0, 2 * pad + 1)
    cols = jnp.where(flips[:, None], cols[:, ::-1], cols)
    # Crops as two one-axis gathers: cheaper on XLA:CPU than a per-example dynamic_slice.
    cropped = jnp.take_along_axis(images, rows[:, :, None, None], axis=1)
    return jnp.take_along_axis(cropped, cols[:, None, :, None], axis=2)


def translate(images: jax.Array, dy: int, dx: int) -> jax.Array:
    """The batch shifted by (dy, dx) pixels (static), the uncovered border filled by reflection."""
    t = max(abs(dy), abs(dx))
    if t == 0:
        return images
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
    return padded[:, t - dy:t - dy + h, t - dx:t - dx + w]


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
    if jax.process_count() == 1:  # the same arrays in one batched transfer (docs/benchmarks.md, host work)
        out = jax.device_put(tuple(np.asarray(a) for a in local_arrays), sharding)
    else:
        out = tuple(jax.make_array_from_process_local_data(sharding, np.asarray(a)) for a in local_arrays)
    return out if len(out) > 1 else out[0]
