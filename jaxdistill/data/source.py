"""Datasets on disk: where they live, building the offline ones, describing any of them."""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.data import tokenizer as bpe
from jaxdistill.data.builders import OFFLINE_BUILDERS, build_offline
from jaxdistill.data.text_builders import TEXT_BUILDERS, TOKENIZER_FILE, text_config

TEXT_OPTIONS = ("vocab_size", "seq_len", "max_documents", "tokenizer")  # config.data fields


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A prepared dataset: what the trainer needs to know before reading it."""

    name: str
    data_dir: str
    num_classes: int  # classes; for a token dataset the vocabulary size (config.data.vocab_size)
    image_shape: tuple[int, ...]  # (H, W, C); () for a token dataset
    splits: dict[str, int]  # examples per split (windows, for a token dataset)
    kind: str = "image"  # "image" | "tokens"
    seq_len: int = 0  # token dataset: positions per window
    tokenizer: str = ""  # token dataset: path of its tokenizer.json
    tokenizer_sha256: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)  # token dataset: see text_builders
    builder_config: str = ""  # TFDS builder config name, '' for none

    @property
    def tfds_name(self) -> str:
        """The name `tfds.builder` takes: `name` or `name/builder_config`."""
        return f"{self.name}/{self.builder_config}" if self.builder_config else self.name


def default_data_dir() -> str:
    """$JAXDISTILL_DATA_DIR if set, else ~/.cache/jaxdistill/tensorflow_datasets."""
    return os.environ.get("JAXDISTILL_DATA_DIR") or os.path.expanduser(
        "~/.cache/jaxdistill/tensorflow_datasets"
    )


def _not_prepared(name: str, data_dir: str, why: str) -> ValueError:
    return ValueError(
        f"config.data.name={name!r}: {why} in data_dir={data_dir!r}; nothing is ever downloaded. "
        f"Prepare it where there is network with `tfds build {name} --data_dir={data_dir} "
        "--file_format=array_record` (for config.data.reader='grain'; plain `tfds build` writes "
        "tfrecord, for reader 'tf'), or use an offline dataset: "
        f"{', '.join([*OFFLINE_BUILDERS, *TEXT_BUILDERS])}."
    )


def tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a dataset already prepared in `data_dir` (never downloads)."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError) as e:  # unknown name or version
        raise _not_prepared(name, data_dir, "no such TFDS dataset") from e
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir, "dataset is not prepared")
    return builder


def split_labels(info: DatasetInfo, split: str) -> np.ndarray:
    """[N] int32 labels of an image split, example i at index i (the order both readers
    index), read once without decoding the images."""
    builder = tfds_builder(info.tfds_name, info.data_dir)
    skip = {"image": tfds.decode.SkipDecoding()}
    try:
        source = builder.as_data_source(split, decoders=skip)
        labels = [source[i]["label"] for i in range(len(source))]
    except NotImplementedError:  # tfrecord only (reader 'tf')
        labels = [ex["label"] for ex in tfds.as_numpy(builder.as_dataset(
            split, shuffle_files=False, decoders=skip))]
    return np.asarray(labels, np.int32)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text_options(vocab_size, seq_len, max_documents, tokenizer) -> None:
    """One-line ValueErrors naming the config.data field of a bad token-dataset option."""
    low = bpe.MIN_VOCAB_SIZE
    if not _integer(vocab_size) or vocab_size < low:
        raise ValueError(f"config.data.vocab_size must be an integer >= {low} (256 bytes + "
                         f"{len(bpe.SPECIAL_TOKENS)} special tokens), got {vocab_size!r}")
    if not _integer(seq_len) or seq_len < 2:
        raise ValueError(f"config.data.seq_len must be an integer >= 2, got {seq_len!r}")
    if not _integer(max_documents) or max_documents < 0 or max_documents == 1:
        raise ValueError("config.data.max_documents must be 0 (all) or an integer >= 2 (a train "
                         f"and a test document), got {max_documents!r}")
    if not isinstance(tokenizer, str) or (tokenizer and not os.path.isfile(tokenizer)):
        raise ValueError("config.data.tokenizer must be '' (train one) or the path of a "
                         f"tokenizer.json file, got {tokenizer!r}")
    if not tokenizer:
        return
    field = f"config.data.tokenizer={tokenizer!r}"
    try:
        tok = bpe.load(tokenizer)
    except Exception as e:  # the Rust side raises a bare Exception
        raise ValueError(f"{field}: not a tokenizer.json ({str(e).partition(chr(10))[0]})") from e
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"{field} has {tok.get_vocab_size()} tokens, but "
                         f"config.data.vocab_size={vocab_size}")
    if tok.token_to_id(bpe.EOT) is None:
        raise ValueError(f"{field} has no {bpe.EOT!r} token (the end of a document)")


def _prepare_text(name, data_dir, vocab_size, seq_len, max_documents, tokenizer) -> DatasetInfo:
    if isinstance(tokenizer, str):
        tokenizer = os.path.expanduser(tokenizer)
    _check_text_options(vocab_size, seq_len, max_documents, tokenizer)
    config = text_config(vocab_size, seq_len, max_documents, tokenizer)
    builder = build_offline(name, data_dir, config)
    metadata = dict(builder.info.metadata)
    return DatasetInfo(
        name=name,
        data_dir=data_dir,
        num_classes=vocab_size,
        image_shape=(),
        splits={k: v.num_examples for k, v in builder.info.splits.items()},
        kind="tokens",
        seq_len=seq_len,
        tokenizer=os.fspath(builder.data_path / TOKENIZER_FILE),
        tokenizer_sha256=metadata["tokenizer_sha256"],
        metadata=metadata,
        builder_config=config.name,
    )


def prepare(name: str, data_dir: str | None = None, *, vocab_size: int = 8192,
            seq_len: int = 256, max_documents: int = 0, tokenizer: str = "") -> DatasetInfo:
    """Builds an offline dataset into `data_dir` if missing; any other must be prepared there.

    The keyword options (`TEXT_OPTIONS`, see `text_builders.TextConfig`) configure a token
    dataset (`TEXT_BUILDERS`); image datasets ignore them.
    """
    data_dir = os.path.expanduser(os.fspath(data_dir or default_data_dir()))
    if name in TEXT_BUILDERS:
        return _prepare_text(name, data_dir, vocab_size, seq_len, max_documents, tokenizer)
    if name in OFFLINE_BUILDERS:
        builder = build_offline(name, data_dir)
    else:
        builder = tfds_builder(name, data_dir)
    features = builder.info.features
    if not {"image", "label"} <= set(features.keys()):
        raise ValueError(f"config.data.name={name!r}: needs 'image' and 'label' features")
    image, label = features["image"], features["label"]
    if None in image.shape or len(image.shape) != 3 or image.np_dtype != np.uint8:
        raise ValueError(
            f"config.data.name={name!r}: images must be uint8 of one fixed (H, W, C) shape, "
            f"got {image.np_dtype.__name__} {image.shape} (no resizing stage exists)"
        )
    return DatasetInfo(
        name=name,
        data_dir=data_dir,
        num_classes=label.num_classes,
        image_shape=tuple(image.shape),
        splits={k: v.num_examples for k, v in builder.info.splits.items()},
    )


def prepare_from_config(data_cfg) -> DatasetInfo:
    """`prepare` from `config.data`: name, data_dir ('' = `default_data_dir()`) and the
    `TEXT_OPTIONS` it has (absent ones take `prepare`'s defaults)."""
    name = data_cfg.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"config.data.name must be a dataset name, got {name!r}; e.g. "
                         "'mnist5k' or 'pystdlib' (both offline)")
    options = {k: data_cfg[k] for k in TEXT_OPTIONS if k in data_cfg}
    return prepare(name, data_cfg.get("data_dir") or None, **options)
