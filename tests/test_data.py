"""The CIFAR-10 pipeline on fixtures written here in the real formats (never the real dataset)."""

import collections
import hashlib
import io
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from smoothmax import data

CLASSES = data.CIFAR10_CLASSES


def fake_split(rng, per_class, classes=10):
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    rng.shuffle(labels)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    return images, labels


def batch_pickle(obj) -> bytes:
    """A pickle as the official (Python 2) batches are: plain byte strings, and numpy's arrays under the module
    name numpy 1 gave them, ``numpy.core.multiarray`` (protocol 3 writes bytes as bytes, as protocol 2 wrote
    Python 2's str; Python 3's protocol 2 would call ``_codecs.encode`` instead)."""
    return pickle.dumps(obj, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_official(root: Path, as_archive: bool, rng):
    """The official python format: 5 train batches, a test batch and batches.meta, pickled as bytes dicts."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = fake_split(rng, 3)
    test = fake_split(rng, 2)

    def dump(name, images, labels):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": rows,
                 b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}
        (folder / name).write_bytes(batch_pickle(batch))

    parts = np.array_split(np.arange(len(train[1])), 5)
    for i, idx in enumerate(parts, 1):
        dump(f"data_batch_{i}", train[0][idx], train[1][idx])
    dump("test_batch", *test)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 6, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(batch_pickle(meta))
    if not as_archive:
        return folder, train, test
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive, train, test


def write_folder(root: Path, classes, rng, suffix=".png", per_class=(3, 2), quality=95):
    expected = {}
    for split, count in zip(("train", "test"), per_class):
        images, labels = [], []
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # Smooth images, so that JPEG's loss stays small.
                img = np.clip(rng.integers(40, 200, (1, 1, 3)) + np.arange(32)[:, None, None], 0, 255)
                img = np.broadcast_to(img, (32, 32, 3)).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i:04d}{suffix}", quality=quality)
                images.append(img)
                labels.append(cls)
        expected[split] = (np.stack(images), labels)
    return expected


def tgz(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(folder / split, arcname=split)
    return dest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def no_local_copy(monkeypatch):
    """A developer's ``SMOOTHMAX_CIFAR10`` must not leak into the tests."""
    monkeypatch.delenv(data.SOURCE_ENV, raising=False)


@pytest.mark.parametrize("as_archive", [True, False])
def test_official_format_gives_exact_pixels_and_labels(tmp_path, rng, as_archive):
    path, train, test = write_official(tmp_path, as_archive, rng)
    ds = data.load_cifar10(path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_images, train[0])
    np.testing.assert_array_equal(ds.train_labels, train[1])
    np.testing.assert_array_equal(ds.test_images, test[0])
    np.testing.assert_array_equal(ds.test_labels, test[1])
    assert ds.class_names == CLASSES and ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    # The extracted folder's parent works too.
    if not as_archive:
        again = data.load_cifar10(tmp_path, cache_dir=tmp_path / "cache2")
        np.testing.assert_array_equal(again.train_images, train[0])


def test_png_folder_uses_official_class_order(tmp_path, rng):
    classes = list(CLASSES)[::-1]  # written in reverse: the loader must still use the official order
    expected = write_folder(tmp_path / "tree", classes, rng)
    ds = data.load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert ds.class_names == CLASSES
    for split in ("train", "test"):
        images = getattr(ds, f"{split}_images")
        labels = getattr(ds, f"{split}_labels")
        want_images, want_names = expected[split]
        # Match each written image to its loaded copy through its label and pixels.
        loaded = {(CLASSES[l], img.tobytes()) for img, l in zip(images, labels)}
        written = {(c, img.tobytes()) for img, c in zip(want_images, want_names)}
        assert loaded == written and len(images) == len(want_images)


def test_other_class_names_are_sorted(tmp_path, rng):
    write_folder(tmp_path, ["zebra", "ant", "moose"], rng)
    ds = data.load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert ds.class_names == ("ant", "moose", "zebra")
    assert sorted(set(ds.train_labels.tolist())) == [0, 1, 2]


def test_jpeg_tgz_within_jpeg_loss(tmp_path, rng):
    expected = write_folder(tmp_path / "tree", list(CLASSES), rng, suffix=".jpg", quality=75)
    archive = tgz(tmp_path / "tree", tmp_path / "cifar10-jpeg.tgz")
    ds = data.load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (30, 32, 32, 3) and ds.test_images.shape == (20, 32, 32, 3)
    for split in ("train", "test"):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        want_images, want_names = expected[split]
        # Within a class, files load in name order, as they were written.
        for cls_index, cls in enumerate(CLASSES):
            got = images[labels == cls_index].astype(int)
            want = want_images[[n == cls for n in want_names]].astype(int)
            assert np.abs(got - want).mean() < 3.0


def test_cache_hit_and_invalidation(tmp_path, rng, monkeypatch):
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    first = data.load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1

    def no_decode(path):
        raise AssertionError("decoded again despite a cache entry")

    monkeypatch.setattr(data, "_decode", no_decode)
    second = data.load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.train_images, second.train_images)
    assert second.class_names == first.class_names
    monkeypatch.undo()
    # A changed image changes the content hash: a new entry.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tree" / "train" / "a" / "0000.png")
    third = data.load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.array_equal(third.train_images, first.train_images)


def expect_error(tmp_path, path, match):
    with pytest.raises(data.DatasetError, match=match):
        data.load_cifar10(path, cache_dir=tmp_path / "cache")
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir()), "a failed load left a cache entry"


def test_missing_path(tmp_path):
    expect_error(tmp_path, tmp_path / "nope.tgz", "does not exist")


def test_truncated_archive(tmp_path, rng):
    archive, _, _ = write_official(tmp_path, True, rng)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    expect_error(tmp_path, archive, "truncated or corrupt")


def test_corrupt_pickle(tmp_path, rng):
    folder, _, _ = write_official(tmp_path, False, rng)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    expect_error(tmp_path, folder, "data_batch_3")


def test_unreadable_image(tmp_path, rng):
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    (tmp_path / "tree" / "train" / "b" / "0001.png").write_bytes(b"\x89PNG garbage")
    expect_error(tmp_path, tmp_path / "tree", r"train/b/0001.png: unreadable image")


def test_wrong_image_size(tmp_path, rng):
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "tree" / "test" / "a" / "0000.png")
    expect_error(tmp_path, tmp_path / "tree", r"test/a/0000.png: image is 16x16, expected 32x32")


def test_class_folders_differ(tmp_path, rng):
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    (tmp_path / "tree" / "test" / "b").rename(tmp_path / "tree" / "test" / "c")
    expect_error(tmp_path, tmp_path / "tree", r"class folders differ.*only in train: \['b'\].*only in test: \['c'\]")


def test_empty_class(tmp_path, rng):
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    for f in (tmp_path / "tree" / "train" / "b").iterdir():
        f.unlink()
    expect_error(tmp_path, tmp_path / "tree", "train/b is empty")
    archive = tgz(tmp_path / "tree", tmp_path / "tree.tgz")
    expect_error(tmp_path, archive, "train/b is empty")


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_md5_and_explains_offline_use(tmp_path, monkeypatch):
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"wrong bytes"))
    with pytest.raises(data.DatasetError, match="md5"):
        data.load_cifar10(cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())

    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DatasetError, match="data.path"):
        data.load_cifar10(cache_dir=tmp_path)
    with pytest.raises(data.DatasetError, match="download=False"):
        data.load_cifar10(download=False, cache_dir=tmp_path)


def test_synthetic_is_deterministic_and_cifar_shaped():
    a = data.synthetic(seed=3, num_train=200, num_test=50)
    b = data.synthetic(seed=3, num_train=200, num_test=50)
    c = data.synthetic(seed=4, num_train=200, num_test=50)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_images, c.train_images)
    assert a.train_images.shape == (200, 32, 32, 3) and a.train_images.dtype == np.uint8
    assert a.test_labels.shape == (50,) and a.num_classes == 10
    assert a.mean.shape == (3,) and np.all(a.std > 0)
    with pytest.raises(ValueError, match="difficulty"):
        data.synthetic(difficulty=2.0)


def test_epoch_batches_are_deterministic_full_and_reshuffled():
    a = data.epoch_permutation(103, 10, seed=1, epoch=0)
    assert a.shape == (10, 10) and len(set(a.ravel())) == 100
    np.testing.assert_array_equal(a, data.epoch_permutation(103, 10, seed=1, epoch=0))
    assert not np.array_equal(a, data.epoch_permutation(103, 10, seed=1, epoch=1))
    seen = np.concatenate([idx[mask] for idx, mask in data.eval_batches(103, 10)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(103))


def test_augmentation_shapes_determinism_and_variety():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)), jnp.float32)
    key, flips = jax.random.key(0), jnp.asarray(data.epoch_flips(64, 0, 0))
    out = jax.jit(data.augment)(key, images, flips)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out, jax.jit(data.augment)(key, images, flips))
    other = data.augment(jax.random.key(1), images, flips)
    assert not np.array_equal(out, other)
    # Each output is a crop of the reflect-padded input, mirrored exactly where flips says.
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for i in range(8):
        step = -1 if flips[i] else 1
        assert any(np.array_equal(np.asarray(out[i]), padded[i, dy:dy + 32, dx:dx + 32][:, ::step])
                   for dy in range(9) for dx in range(9))
    # Over a batch, both flips and many offsets occur.
    unchanged = [np.array_equal(np.asarray(out[i]), np.asarray(images[i])) for i in range(64)]
    assert sum(unchanged) < 16


def test_augmentation_without_crops_only_mirrors():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)), jnp.float32)
    flips = np.arange(16) % 3 == 0
    out = np.asarray(data.augment(jax.random.key(0), images, jnp.asarray(flips), pad=0))
    expected = np.where(flips[:, None, None, None], np.asarray(images)[:, :, ::-1], np.asarray(images))
    np.testing.assert_array_equal(out, expected)


def test_flips_are_fair_coins_fixed_by_seed_and_epoch():
    first, second = (data.epoch_flips(1000, 3, e) for e in (0, 1))
    np.testing.assert_array_equal(first, data.epoch_flips(1000, 3, 0))
    assert 400 < first.sum() < 600
    assert 0.4 < np.mean(first == second) < 0.6  # independent coins every epoch
    assert not np.array_equal(first, data.epoch_flips(1000, 4, 0))


def test_alternate_flips_mirror_each_image_every_other_epoch():
    coin = data.epoch_flips(1000, 3, 0)
    np.testing.assert_array_equal(data.epoch_flips(1000, 3, 0, alternate=True), coin)  # epoch 0: the coins
    np.testing.assert_array_equal(data.epoch_flips(1000, 3, 1, alternate=True), ~coin)
    np.testing.assert_array_equal(data.epoch_flips(1000, 3, 4, alternate=True), coin)
    np.testing.assert_array_equal(data.epoch_flips(1000, 3, 5, alternate=True), ~coin)


def test_translate_shifts_with_reflected_borders():
    images = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1)
    shifted = np.asarray(data.translate(images, 1, -2))
    np.testing.assert_array_equal(shifted[:, 1:, :3], np.asarray(images)[:, :4, 2:])  # content moves down, left
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(shifted, padded[:, 1:6, 4:9])
    np.testing.assert_array_equal(data.translate(images, 0, 0), images)


def test_sharded_batches_on_four_host_devices(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, jax
        from smoothmax import data
        assert jax.device_count() == 4, jax.devices()
        mesh = data.data_mesh()
        idx = data.host_indices(np.arange(8))
        images = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
        x, y = data.shard_batch(mesh, images[idx], idx.astype(np.int32))
        assert x.shape == (8, 2) and len(x.addressable_shards) == 4
        assert [s.data.shape for s in x.addressable_shards] == [(2, 2)] * 4
        np.testing.assert_array_equal(np.asarray(x), images)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_each_host_reads_only_its_part_of_a_batch(monkeypatch):
    monkeypatch.setattr(data.jax, "process_count", lambda: 2)
    monkeypatch.setattr(data.jax, "process_index", lambda: 1)
    np.testing.assert_array_equal(data.host_indices(np.arange(10, 18)), np.arange(14, 18))
    with pytest.raises(ValueError, match="does not split over 2 hosts"):
        data.host_indices(np.arange(7))


def test_subset_keeps_a_fixed_part_of_the_training_split():
    ds = data.synthetic(num_train=100, num_test=10)
    a, b = data.subset(ds, 30), data.subset(ds, 30)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert len(a.train_labels) == 30 and len(a.test_labels) == 10
    with pytest.raises(ValueError, match="train subset"):
        data.subset(ds, 1000)


# --------------------------------------------------------------------------- untrusted sources


class RunsCode:
    """A pickle payload: unpickling it unrestricted opens (creates) ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("as_archive", [False, True])
def test_pickle_that_would_run_code_is_refused_unrun(tmp_path, rng, as_archive):
    """Issue #11, failure 5: a batch pickle with a ``__reduce__`` payload ran it."""
    folder, _, _ = write_official(tmp_path / "src", False, rng)
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"payload": RunsCode(str(marker))}
    (folder / "data_batch_2").write_bytes(batch_pickle(batch))
    path = folder
    if as_archive:
        path = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    expect_error(tmp_path, path, r"data_batch_2: .*refused global io\.open")
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("payload, match", [
    (np.array([1, "x"], dtype=object), "holds an array of dtype object"),
    ({1, 2}, "holds set"),
    (collections.OrderedDict(a=1), "refused global collections.OrderedDict"),
    ((1, 2), "holds tuple"),
])
def test_pickles_hold_only_what_cifar_batches_hold(tmp_path, rng, payload, match):
    folder, _, _ = write_official(tmp_path, False, rng)
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"extra": payload}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    expect_error(tmp_path, folder, f"test_batch: .*{match}")


def test_pickles_under_numpy_2_module_name_load(tmp_path, rng):
    folder, train, _ = write_official(tmp_path, False, rng)
    plain = pickle.dumps(pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes"), protocol=3)
    assert b"numpy._core.multiarray" in plain
    (folder / "data_batch_1").write_bytes(plain)
    ds = data.load_cifar10(folder, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_images, train[0])


def test_python3_protocol_2_pickles_load_with_their_pixels(tmp_path, rng):
    """Issue #22: a batch re-saved by Python 3 with protocol 2 names ``_codecs.encode`` for every bytes object."""
    folder, train, test = write_official(tmp_path, False, rng)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        plain = pickle.dumps(pickle.loads((folder / name).read_bytes(), encoding="bytes"), protocol=2)
        assert b"c_codecs\nencode\n" in plain
        (folder / name).write_bytes(plain)
    ds = data.load_cifar10(folder, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_images, train[0])
    np.testing.assert_array_equal(ds.train_labels, train[1])
    np.testing.assert_array_equal(ds.test_images, test[0])


class Encodes:
    """A pickle payload: ``_codecs.encode(*args)`` at load time."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        import _codecs
        return (_codecs.encode, self.args)


@pytest.mark.parametrize("args, match", [
    (("x" * 10, "zlib"), r"refused _codecs.encode\(str, 'zlib'\)"),
    ((b"x" * 10, "base64"), r"refused _codecs.encode\(bytes, 'base64'\)"),
    (("x",), "missing"),
])
def test_codecs_reaches_only_latin1_text(tmp_path, rng, args, match):
    folder, _, _ = write_official(tmp_path, False, rng)
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"extra": Encodes(*args)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    expect_error(tmp_path, folder, f"test_batch: .*{match}")
    for name in ("decode", "lookup", "register"):
        with pytest.raises(pickle.UnpicklingError, match=f"refused global _codecs.{name}"):
            data._BatchUnpickler(io.BytesIO(b"c_codecs\n" + name.encode() + b"\n."), encoding="bytes").load()


@pytest.mark.parametrize("batch, match", [
    ({b"data": [[0] * 3072], b"labels": [0]}, "data is not a uint8 array"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [b"cat"]}, "labels are not 1 integers"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, r"labels outside \[0, 10\)"),
    ([b"not a dict"], "not a CIFAR-10 batch's dict"),
])
def test_malformed_batches_name_the_file(tmp_path, rng, batch, match):
    folder, _, _ = write_official(tmp_path, False, rng)
    (folder / "data_batch_5").write_bytes(batch_pickle(batch))
    expect_error(tmp_path, folder, match)


def test_cached_official_archive_is_md5_checked_before_decoding(tmp_path, rng, monkeypatch):
    archive, train, _ = write_official(tmp_path / "src", True, rng)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(archive, cache / "cifar-10-python.tar.gz")
    decode = data._decode

    def no_decode(path):
        raise AssertionError("decoded an archive whose md5 is wrong")

    monkeypatch.setattr(data, "_decode", no_decode)
    with pytest.raises(data.DatasetError, match=f"md5 .*{data.CIFAR10_MD5}.*delete it to download it again"):
        data.load_cifar10(download=False, cache_dir=cache)
    # The same file with the md5 it should have is decoded.
    monkeypatch.setattr(data, "_decode", decode)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = data.load_cifar10(download=False, cache_dir=cache)
    np.testing.assert_array_equal(ds.train_images, train[0])


def test_official_layout_only_at_the_archive_root(tmp_path, rng):
    folder, train, _ = write_official(tmp_path / "src", False, rng)
    nested = tmp_path / "nested.tar.gz"
    with tarfile.open(nested, "w:gz") as tar:
        tar.add(folder, arcname="backup/cifar-10-batches-py")
    with pytest.warns(UserWarning, match="skipped 7 files"):
        expect_error(tmp_path, nested, "no images under train or test.*cifar-10-batches-py/ at its root")
    dotted = tmp_path / "dotted.tar.gz"  # what `tar czf dotted.tar.gz ./cifar-10-batches-py` writes
    with tarfile.open(dotted, "w:gz") as tar:
        tar.add(folder, arcname="./cifar-10-batches-py")
    ds = data.load_cifar10(dotted, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_images, train[0])


def png_header(width, height) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose pixel data is empty: tiny on disk."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size, match", [
    (50_000, r"0000.png: unreadable image \(.*decompression bomb"),  # past PIL's own pixel limit
    (1_000, r"0000.png: image is 1000x1000, expected 32x32"),  # refused from the header: the pixels would fail
])
def test_image_size_is_refused_from_its_header(tmp_path, rng, size, match):
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    (tmp_path / "tree" / "train" / "a" / "0000.png").write_bytes(png_header(size, size))
    expect_error(tmp_path, tmp_path / "tree", match)


def test_archive_bombs_are_refused_before_decompressing(tmp_path, rng):
    # A header claiming 3 GiB: refused at the header, in a 1 KB file.
    claim = tarfile.TarInfo("train/a/0000.png")
    claim.size = 3 << 30
    bomb = tmp_path / "claim.tgz"
    bomb.write_bytes(zlib.compress(claim.tobuf(), wbits=31))
    expect_error(tmp_path, bomb, "claim.tgz: train/a/0000.png reaches past 1024 MiB uncompressed")
    # A real 2 MiB image member compresses to a few KB; the image cap refuses it before reading.
    write_folder(tmp_path / "tree", ["a", "b"], rng)
    (tmp_path / "tree" / "train" / "a" / "0001.png").write_bytes(bytes(2 << 20))
    archive = tgz(tmp_path / "tree", tmp_path / "big.tgz")
    assert archive.stat().st_size < 100_000
    expect_error(tmp_path, archive, r"train/a/0001.png: 2097152 bytes, more than the 1 MiB")


def test_batch_pickles_are_capped(tmp_path, rng, monkeypatch):
    archive, _, _ = write_official(tmp_path, True, rng)
    monkeypatch.setattr(data, "_MAX_PICKLE_BYTES", 8 << 10)
    expect_error(tmp_path, archive, r"data_batch_1: \d+ bytes, more than the 0.0078125 MiB any CIFAR-10 batch")


def test_dot_files_are_skipped_and_stray_files_counted(tmp_path, rng):
    tree = tmp_path / "tree"
    write_folder(tree, ["a", "b"], rng)
    before = data.content_hash(tree)
    (tree / "train" / "a" / "._0000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    (tree / ".DS_Store").write_bytes(b"junk")
    (tree / "test" / ".cache").mkdir()
    (tree / "test" / ".cache" / "x.png").write_bytes(b"junk")
    (tree / "train" / "a" / "notes.txt").write_text("stray")
    (tree / "preview.png").write_bytes(b"not under train|test/<class>/")
    assert data.content_hash(tree) == before, "the hash covers files the decoder does not read"
    with pytest.warns(UserWarning, match=r"skipped 2 files .*\(first: .*preview.png\)"):
        ds = data.load_cifar10(tree, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (6, 32, 32, 3)
    archive = tmp_path / "tree.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar")
    with pytest.warns(UserWarning, match="skipped 2 files"):
        from_archive = data.load_cifar10(archive, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(from_archive.train_images, ds.train_images)
    # A decoded file does count.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tree / "test" / "b" / "0001.png")
    assert data.content_hash(tree) != before


def test_official_folder_hash_covers_only_the_batch_files(tmp_path, rng):
    folder, _, _ = write_official(tmp_path, False, rng)
    before = data.content_hash(folder)
    assert data.content_hash(tmp_path) == before  # the folder or its parent: the same files
    (folder / "readme.html").write_text("the official archive has one")
    assert data.content_hash(folder) == before
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes() + b"\0")
    assert data.content_hash(folder) != before


# --------------------------------------------------------------------------- where the data comes from


def test_environment_variable_names_the_local_copy(tmp_path, rng, monkeypatch):
    archive, train, _ = write_official(tmp_path, True, rng)
    assert data.resolve_source("") is None and data.resolve_source(None) is None
    monkeypatch.setenv(data.SOURCE_ENV, str(archive))
    assert data.resolve_source("") == archive and data.resolve_source(None) == archive
    assert data.resolve_source("~/mine.tgz") == Path.home() / "mine.tgz"  # a config's path beats the variable
    ds = data.load_cifar10("", download=False, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_images, train[0])
    monkeypatch.setenv(data.SOURCE_ENV, str(tmp_path / "gone.tgz"))
    with pytest.raises(data.DatasetError, match=r"gone.tgz \(named by \$SMOOTHMAX_CIFAR10\) does not exist"):
        data.load_cifar10(cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("name", ["cifar10.py:softmax", "cifar10_cpu.py:lse", "sweep_temperature.py"])
def test_cifar_configs_take_the_official_archive_unless_told(name):
    from smoothmax.config import load_config

    c = load_config(str(Path(__file__).parents[1] / "configs" / name))
    assert c.data.name == "cifar10" and c.data.path == "" and c.data.download


# --------------------------------------------------------------------------- the cache


def test_cache_entries_honour_the_umask(tmp_path, rng):
    archive, _, _ = write_official(tmp_path, True, rng)
    umask = os.umask(0o002)
    try:
        data.load_cifar10(archive, cache_dir=tmp_path / "cache")
    finally:
        os.umask(umask)
    (entry,) = (tmp_path / "cache").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o775
    assert {stat.S_IMODE(f.stat().st_mode) for f in entry.iterdir()} == {0o664}


def test_damaged_cache_entry_is_rebuilt(tmp_path, rng):
    archive, train, _ = write_official(tmp_path, True, rng)
    data.load_cifar10(archive, cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    images = entry / "train_images.npy"
    images.write_bytes(images.read_bytes()[:100])
    ds = data.load_cifar10(archive, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_images, train[0])
    np.testing.assert_array_equal(np.load(images), train[0])


FILL_CACHE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from smoothmax import data

    source, cache, gate, out, processes = sys.argv[1:]
    rename = os.replace

    def rename_once_all_have_decoded(src, dst):  # so that every process races for the one entry
        Path(gate, str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(gate)) < int(processes) and time.monotonic() < deadline:
            time.sleep(0.01)
        rename(src, dst)

    os.replace = rename_once_all_have_decoded
    ds = data.load_cifar10(source, cache_dir=cache)
    np.savez(out, **{name: getattr(ds, name) for name in data._ARRAYS})
""")


def test_processes_filling_one_cache_all_succeed(tmp_path, rng):
    """Issue #11, failure 6: of processes filling one empty cache at once, all but the rename's winner died."""
    archive, train, test = write_official(tmp_path, True, rng)
    (tmp_path / "gate").mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", FILL_CACHE, str(archive), str(tmp_path / "cache"),
                          str(tmp_path / "gate"), str(tmp_path / f"out{i}.npz"), "3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for i in range(3):
        got = np.load(tmp_path / f"out{i}.npz")
        np.testing.assert_array_equal(got["train_images"], train[0])
        np.testing.assert_array_equal(got["test_labels"], test[1])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"cifar10-{data.content_hash(archive)}"]
