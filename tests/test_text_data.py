"""Text datasets for causal LM: packing, the offline TFDS builders, the tokenizer, token batches."""

import dataclasses
import itertools
import json
import os
import platform

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from refusals import refusal

from jaxdistill.data import (
    corpora,
    decode,
    grain_reader,
    load_tokenizer,
    make_eval_iterator,
    make_train_iterator,
    packing,
    prepare,
    prepare_from_config,
)
from jaxdistill.data import tokenizer as bpe

V, L, D = 512, 64, 40  # vocab, window length, documents of the small pystdlib
B = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_text"))


@pytest.fixture(scope="module")
def topics(data_dir):
    return prepare("pydoc_topics", data_dir, vocab_size=V, seq_len=L)


@pytest.fixture(scope="module")
def stdlib(data_dir):
    return prepare("pystdlib", data_dir, vocab_size=V, seq_len=L, max_documents=D)


@pytest.fixture(scope="module")
def sharding():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data"))


def _windows(info, split) -> dict[str, np.ndarray]:
    source = tfds.data_source(info.tfds_name, split=split, data_dir=info.data_dir, download=False)
    examples = [source[i] for i in range(len(source))]
    return {k: np.stack([e[k] for e in examples]) for k in packing.FIELDS}


def _split_documents(name, max_documents=0) -> dict[str, list]:
    docs = list(itertools.islice(corpora.CORPORA[name](), max_documents or None))
    return {"train": [d for i, d in enumerate(docs) if i % 20],
            "test": [d for i, d in enumerate(docs) if i % 20 == 0]}


def _pieces(windows):
    """(inputs, targets, weights) of every document piece, in window order."""
    for w in range(len(windows["inputs"])):
        seg = windows["segment_ids"][w]
        for s in range(1, seg.max() + 1):
            at = seg == s
            yield windows["inputs"][w][at], windows["targets"][w][at], windows["weights"][w][at]


def _documents(windows, eot_id=0):
    """Each document's (all tokens incl. the final eot, weights of its targets), rebuilt."""
    tokens, weights = None, []
    for inputs, targets, w in _pieces(windows):
        if tokens is None:
            tokens = [int(inputs[0])]
        assert tokens[-1] == inputs[0]  # a piece starts where the previous one stopped
        tokens += targets.tolist()
        weights += w.tolist()
        if targets[-1] == eot_id:
            yield tokens, weights
            tokens, weights = None, []
    assert tokens is None  # no document left unfinished


# --- packing ------------------------------------------------------------------------------


def test_pack_hand_built_boundaries_and_padding():
    out = packing.pack([[5, 6, 7], [8], [9, 10]], seq_len=4, eot_id=0)
    assert {k: v.dtype for k, v in out.items()} == packing.FIELDS
    np.testing.assert_array_equal(out["inputs"], [[5, 6, 7, 8], [9, 10, 0, 0]])
    np.testing.assert_array_equal(out["targets"], [[6, 7, 0, 0], [10, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 2], [1, 1, 0, 0]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(out["weights"], [[1, 1, 1, 1], [1, 1, 0, 0]])


def test_pack_splits_long_documents_without_losing_targets():
    doc = list(range(1, 11))  # 10 tokens + eot = 10 positions over windows of 4
    out = packing.pack([doc, [20]], seq_len=4, eot_id=0)
    np.testing.assert_array_equal(out["inputs"], [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 20, 0]])
    np.testing.assert_array_equal(out["targets"], [[2, 3, 4, 5], [6, 7, 8, 9], [10, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 2, 0]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 0, 0]])
    np.testing.assert_array_equal(out["weights"], [[1] * 4, [1] * 4, [1, 1, 1, 0]])
    assert [t for t, _ in _documents(out)] == [doc + [0], [20, 0]]


def test_pack_prompt_completion_masks_the_prompt():
    out = packing.pack([([11, 12], [13, 14]), [5], ([], [6])], seq_len=8, eot_id=0)
    np.testing.assert_array_equal(out["inputs"], [[11, 12, 13, 14, 5, 6, 0, 0]])
    np.testing.assert_array_equal(out["targets"], [[12, 13, 14, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 2, 3, 0, 0]])
    # the target 12 is inside the prompt; 13, 14 and the eot are the completion's
    np.testing.assert_array_equal(out["weights"], [[0, 1, 1, 1, 1, 1, 0, 0]])


def test_pack_edge_cases():
    assert packing.pack([], seq_len=4, eot_id=0)["inputs"].shape == (0, 4)
    out = packing.pack([[3], []], seq_len=2, eot_id=0)  # an empty document has no position
    np.testing.assert_array_equal(out["inputs"], [[3, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 0]])
    for bad in [(3, 4), ([3],), ([3], [4], [5]), [[3, 4]]]:  # a tuple of ids is not a plain document
        assert refusal(lambda b=bad: packing.pack([b], seq_len=2, eot_id=0)) == (
            "a document is a list or 1-D array of token ids, or a tuple (prompt ids, "
            "completion ids) of two of them")


def test_windows_are_aligned_and_never_cross_documents(stdlib):
    w = _windows(stdlib, "train")
    seg, pos = w["segment_ids"], w["positions"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    np.testing.assert_array_equal(w["targets"][:, :-1][same], w["inputs"][:, 1:][same])
    np.testing.assert_array_equal(w["weights"] > 0, seg > 0)  # plain documents: all targets
    np.testing.assert_array_equal(pos[:, 1:][same], pos[:, :-1][same] + 1)
    assert (pos[:, 1:][~same & (seg[:, 1:] > 0)] == 0).all() and (pos[:, 0] == 0).all()
    assert (w["inputs"][seg == 0] == 0).all() and (w["targets"][seg == 0] == 0).all()
    assert pos.max() < L and seg.max() > 1  # several documents share some window
    assert (seg[:-1] > 0).all()  # only the last window has padding


# --- builders -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pystdlib", "pydoc_topics"])
def test_round_trip_reproduces_every_document(name, request):
    info = request.getfixturevalue({"pystdlib": "stdlib", "pydoc_topics": "topics"}[name])
    expected = _split_documents(name, D if name == "pystdlib" else 0)
    for split, docs in expected.items():
        rebuilt = list(_documents(_windows(info, split)))
        assert len(rebuilt) == len(docs) == info.metadata["documents"][split]
        for (tokens, _), doc in zip(rebuilt, docs):
            assert decode(info, tokens[:-1]) == doc.text, doc.key


def test_split_rule_metadata_and_tokenizer_file(topics, stdlib, data_dir):
    assert topics.metadata["documents"] == {"train": 75, "test": 4}  # 79 topics: 0, 20, 40, 60
    assert stdlib.metadata["documents"] == {"train": 38, "test": 2}
    for info in (topics, stdlib):
        assert info.kind == "tokens" and info.num_classes == V and info.image_shape == ()
        assert info.seq_len == L and info.metadata["python_version"] == platform.python_version()
        directory = os.path.join(data_dir, info.name, info.builder_config, "1.0.0")
        assert os.path.dirname(info.tokenizer) == directory
        assert bpe.file_sha256(info.tokenizer) == info.tokenizer_sha256
        with open(os.path.join(directory, "metadata.json")) as f:
            assert json.load(f) == info.metadata
        for split, windows in info.splits.items():
            w = _windows(info, split)
            assert len(w["inputs"]) == windows
            assert w["weights"].sum() == info.metadata["target_tokens"][split]
    assert (topics.builder_config, stdlib.builder_config) == ("v512_l64_all", "v512_l64_d40")
    assert load_tokenizer(topics).get_vocab_size() == V
    assert load_tokenizer(topics).token_to_id(bpe.EOT) == topics.metadata["eot_id"] == 0


def test_tokenizer_is_trained_on_the_train_split_only(topics, tmp_path):
    train = _split_documents("pydoc_topics")["train"]
    path = str(tmp_path / "tokenizer.json")
    bpe.train([d.text for d in train], V).save(path)
    assert bpe.file_sha256(path) == topics.tokenizer_sha256
    bpe.train([d.text for d in train + _split_documents("pydoc_topics")["test"]], V).save(path)
    assert bpe.file_sha256(path) != topics.tokenizer_sha256


def test_builds_are_deterministic_and_a_given_tokenizer_is_reused(topics, tmp_path):
    again = prepare("pydoc_topics", str(tmp_path / "a"), vocab_size=V, seq_len=L)
    reused = prepare("pydoc_topics", str(tmp_path / "b"), vocab_size=V, seq_len=L,
                     tokenizer=topics.tokenizer)
    assert again.tokenizer_sha256 == reused.tokenizer_sha256 == topics.tokenizer_sha256
    assert reused.builder_config == f"v512_l64_all_t{topics.tokenizer_sha256[:16]}"
    assert again.splits == reused.splits == topics.splits
    for split in topics.splits:
        expected = _windows(topics, split)
        for other in (again, reused):
            for k, v in _windows(other, split).items():
                np.testing.assert_array_equal(v, expected[k], err_msg=k)


def test_pystdlib_functions_prompt_has_weight_zero(data_dir):
    info = prepare("pystdlib_functions", data_dir, vocab_size=V, seq_len=L, max_documents=D)
    docs = _split_documents("pystdlib_functions", D)["test"]
    rebuilt = list(_documents(_windows(info, "test")))
    assert len(rebuilt) == len(docs) == 2
    for (tokens, weights), doc in zip(rebuilt, docs):
        weights = np.array(weights, bool)
        targets = np.array(tokens[1:])
        assert weights[-1] and not weights[0]  # the eot counts; the prompt's tokens do not
        assert decode(info, targets[weights][:-1]) == doc.text
        assert decode(info, [tokens[0], *targets[~weights]]) == doc.prompt


def test_pystdlib_excludes_tests_and_packages():
    keys = [d.key for d in corpora.pystdlib()]
    assert keys == sorted(keys) and len(keys) > 500
    assert "os.py" in keys and "json/decoder.py" in keys
    for key in keys:
        parts = key.split("/")
        assert not corpora.EXCLUDED_DIRS & set(parts[:-1]), key


# --- reading --------------------------------------------------------------------------------


def _host(batch) -> dict:
    return {k: np.asarray(v) for k, v in batch.items()}


def _train(info, sharding, position=0):
    return make_train_iterator(info, split="train", reader="grain", global_batch_size=B, seed=0,
                               sharding=sharding, position=position)


def test_token_train_batch(stdlib, sharding):
    batch = next(_train(stdlib, sharding))
    assert set(batch) == {*packing.FIELDS, "index"}
    for k, dtype in packing.FIELDS.items():
        assert batch[k].shape == (B, L) and batch[k].dtype == dtype, k
        assert batch[k].sharding == sharding
    assert batch["index"].shape == (B,) and batch["index"].dtype == np.int32
    host = _host(batch)
    w = _windows(stdlib, "train")
    for k in packing.FIELDS:
        np.testing.assert_array_equal(host[k], w[k][host["index"]], err_msg=k)


def test_token_train_resumes_at_position(stdlib, sharding):
    fresh = _train(stdlib, sharding)
    head = [_host(next(fresh)) for _ in range(4)]
    resumed = _train(stdlib, sharding, position=2)
    for expected in head[2:]:
        got = _host(next(resumed))
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert not np.array_equal(head[0]["index"], head[1]["index"])


def test_token_rows_per_process_join_to_the_global_batch(stdlib):
    one = next(grain_reader.train_batches(stdlib, "train", B, 0, 5, 0, 1))
    two = [next(grain_reader.train_batches(stdlib, "train", B, 0, 5, p, 2)) for p in range(2)]
    assert not set(two[0]["index"]) & set(two[1]["index"])
    for k in one:
        assert two[0][k].shape[0] == B // 2
        np.testing.assert_array_equal(np.concatenate([two[0][k], two[1][k]]), one[k], err_msg=k)
    evals = [list(grain_reader.eval_batches(stdlib, "test", 24, p, 2)) for p in range(2)]
    for a, b, full in zip(*evals, grain_reader.eval_batches(stdlib, "test", 24, 0, 1)):
        for k in full:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), full[k], err_msg=k)


def test_token_eval_covers_every_window_once(stdlib, sharding):
    n = stdlib.splits["test"]
    evals = make_eval_iterator(stdlib, split="test", reader="grain", global_batch_size=24,
                               sharding=sharding)
    batches = [_host(b) for b in evals]
    assert len(batches) == len(evals) == -(-n // 24) and n % 24  # the last batch is padded
    joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    np.testing.assert_array_equal(joined["mask"], np.arange(len(joined["mask"])) < n)
    np.testing.assert_array_equal(joined["index"][:n], np.arange(n))
    assert (joined["index"][n:] == -1).all()
    w = _windows(stdlib, "test")
    for k in packing.FIELDS:
        assert batches[0][k].shape == (24, L)
        np.testing.assert_array_equal(joined[k][:n], w[k], err_msg=k)
        assert not joined[k][n:].any(), k  # padding rows: all zeros, weights included


def test_tf_reader_refuses_token_datasets(stdlib, sharding):
    assert refusal(lambda: make_train_iterator(stdlib, split="train", reader="tf",
                                               global_batch_size=B, seed=0,
                                               sharding=sharding)) == (
        "config.data.reader='tf' cannot read tokens datasets such as pystdlib: use "
        "config.data.reader='grain'")


def test_load_tokenizer_checks_the_recorded_sha256(topics):
    assert refusal(lambda: load_tokenizer(dataclasses.replace(topics, tokenizer_sha256="0" * 64))
                   ) == (f"config.data.name: pydoc_topics's {topics.tokenizer} has sha256 "
                         f"{topics.tokenizer_sha256}, but the dataset was built with {'0' * 64}: "
                         f"the file changed since; delete {os.path.dirname(topics.tokenizer)} "
                         "to prepare pydoc_topics again")


# --- prepare_from_config ----------------------------------------------------------------------


def _data_cfg(data_dir, **fields):
    cfg = {"name": "pydoc_topics", "data_dir": data_dir, "vocab_size": V, "seq_len": L,
           "max_documents": 0, "tokenizer": ""}
    return ml_collections.ConfigDict({**cfg, **fields})


def test_prepare_from_config(topics, data_dir):
    assert prepare_from_config(_data_cfg(data_dir)) == topics
    image = ml_collections.ConfigDict({"name": "digits", "data_dir": data_dir})
    assert prepare_from_config(image) == prepare("digits", data_dir)
    assert prepare_from_config(_data_cfg(data_dir, name="digits")).kind == "image"


PREPARE_ERRORS = [  # (data fields, the message; <junk>: not a tokenizer; <topics>: 512 tokens)
    ({"vocab_size": 257}, ("config.data.vocab_size must be an integer >= 258 (256 bytes + 2 "
                           "special tokens), got 257")),
    ({"vocab_size": "512"}, ("config.data.vocab_size must be an integer >= 258 (256 bytes + 2 "
                             "special tokens), got '512'")),
    ({"vocab_size": True}, ("config.data.vocab_size must be an integer >= 258 (256 bytes + 2 "
                            "special tokens), got True")),
    ({"seq_len": 1}, "config.data.seq_len must be an integer >= 2, got 1"),
    ({"seq_len": 64.0}, "config.data.seq_len must be an integer >= 2, got 64.0"),
    ({"max_documents": 1}, ("config.data.max_documents must be 0 (all) or an integer >= 2 (a "
                            "train and a test document), got 1")),
    ({"max_documents": -2}, ("config.data.max_documents must be 0 (all) or an integer >= 2 (a "
                             "train and a test document), got -2")),
    ({"tokenizer": "/no/such/tokenizer.json"}, ("config.data.tokenizer must be '' (train one) "
                                                "or the path of a tokenizer.json file, got "
                                                "'/no/such/tokenizer.json'")),
    ({"tokenizer": "JUNK"}, ("config.data.tokenizer='<junk>': not a tokenizer.json (key must be "
                             "a string at line 1 column 2)")),
    ({"tokenizer": "TOPICS", "vocab_size": 600}, ("config.data.tokenizer='<topics>' has 512 "
                                                  "tokens, but config.data.vocab_size=600")),
    ({"name": ""}, ("config.data.name must be a dataset name, got ''; e.g. 'mnist5k' or "
                    "'pystdlib' (both offline)")),
]


@pytest.mark.parametrize("bad, expected", PREPARE_ERRORS)
def test_prepare_from_config_errors_name_their_field(bad, expected, topics, data_dir, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    paths = {"JUNK": str(junk), "TOPICS": topics.tokenizer}
    bad = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in bad.items()}
    message = refusal(lambda: prepare_from_config(_data_cfg(data_dir, **bad)), data_dir)
    assert message == expected.replace("<junk>", str(junk)).replace("<topics>", topics.tokenizer)
