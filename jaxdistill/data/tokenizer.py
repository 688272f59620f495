"""Byte-level BPE tokenizers (HF `tokenizers`) for the offline text datasets.

`train` builds one from scratch: no normalizer, the ByteLevel pre-tokenizer (GPT-2's split
regex, no prefix space) and decoder, all 256 byte symbols in the initial alphabet (so any text
encodes, and decoding is lossless), special tokens `<|endoftext|>` (id 0, the end of every
document) and `<|pad|>` (id 1, reserved for callers; packing pads with 0). Training is
deterministic for the same texts, with or without `tokenizers`' threads (checked: the same
tokenizer.json bytes with TOKENIZERS_PARALLELISM=false and true), so nothing is set for it.
Special-token strings that occur in a text are encoded as plain text, never as the tokens.
"""

import hashlib
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of `vocab_size` tokens (fewer if the texts run out of merges)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in a tokenizer.json file."""
    tokenizer = Tokenizer.from_file(os.fspath(path))
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added), int32."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]


def load_tokenizer(info) -> Tokenizer:
    """The tokenizer of a token dataset (`DatasetInfo`), checked against its recorded sha256."""
    if info.kind != "tokens":
        raise ValueError(f"{info.name} is an {info.kind} dataset: it has no tokenizer")
    sha = file_sha256(info.tokenizer)
    if sha != info.tokenizer_sha256:
        raise ValueError(f"config.data.name: {info.name}'s {info.tokenizer} has sha256 {sha}, "
                         f"but the dataset was built with {info.tokenizer_sha256}: the file "
                         f"changed since; delete {os.path.dirname(info.tokenizer)} to prepare "
                         f"{info.name} again")
    return load(info.tokenizer)


def decode(info, ids) -> str:
    """The text of token ids [L] of a token dataset; special tokens are left out."""
    ids = np.asarray(ids).reshape(-1).tolist()
    return load_tokenizer(info).decode(ids, skip_special_tokens=True)
