"""Offline paired-tokenizer datasets for cross-tokenizer distillation.

`<corpus>_xtok` (corpus `pystdlib` or `pydoc_topics`): the documents and split of the
corpus' `text_builders` dataset, each tokenised twice, by the student's byte-level BPE
(trained on the training documents, or given; `tokenizer.json`) and by the teacher's
byte tokenizer (`byte_tokenizer`; `teacher_tokenizer.json`), aligned through both
tokenizations' character offsets and packed into paired windows (`xtok_packing`). Config
name `v<vocab>_l<seq_len>_b<teacher_seq_len>_<docs>` (+ `_t<sha16>` with a given
tokenizer). Metadata: that of the text datasets, plus teacher_vocab_size, teacher_eot_id,
teacher_tokenizer_sha256, teacher_target_tokens and aligned_positions per split.
"""

import dataclasses
import functools
import os
import platform

import numpy as np
import tensorflow_datasets as tfds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from jaxdistill.data import text_builders, tokenizer, xtok_packing

TEACHER_TOKENIZER_FILE = "teacher_tokenizer.json"
BYTE_VOCAB_SIZE = 256 + len(tokenizer.SPECIAL_TOKENS)  # specials first, then byte b as b + 2


@functools.cache
def byte_chars() -> tuple[str, ...]:
    """The printable character that byte-level tokenizers (GPT-2's `bytes_to_unicode`,
    `tokenizers`' ByteLevel) write for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def byte_tokenizer() -> Tokenizer:
    """One token per UTF-8 byte (id b + 2) and the two special tokens (ids 0, 1): a BPE
    without merges over the ByteLevel alphabet, so it encodes and decodes like the
    students' tokenizers and gives character offsets the same way."""
    vocab = {tok: i for i, tok in enumerate(tokenizer.SPECIAL_TOKENS)}
    vocab.update({c: b + len(tokenizer.SPECIAL_TOKENS) for b, c in enumerate(byte_chars())})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(tokenizer.SPECIAL_TOKENS))
    tok.encode_special_tokens = True
    return tok


def write_byte_tokenizer(path: str) -> str:
    """Writes `byte_tokenizer()` to `path` (atomically, unless already there); returns it."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        byte_tokenizer().save(tmp)
        os.replace(tmp, path)
    return path


def first_teacher_token(student: Tokenizer) -> np.ndarray:
    """[student vocab] int32: the byte tokenizer's id of each student token's first byte
    (special tokens map to the same special token): the teacher unit that each student
    token's text starts with."""
    inverse = {c: b for b, c in enumerate(byte_chars())}
    specials = {t: i for i, t in enumerate(tokenizer.SPECIAL_TOKENS)}
    out = np.zeros(student.get_vocab_size(), np.int32)
    for token, i in student.get_vocab().items():
        if token not in specials and token[:1] not in inverse:
            raise ValueError(f"the student tokenizer's token {token!r} is not byte-level BPE "
                             "(its first character is not a byte's)")
        out[i] = specials[token] if token in specials else (
            inverse[token[0]] + len(tokenizer.SPECIAL_TOKENS))
    return out


def encode_with_offsets(tok: Tokenizer, texts) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids int32 [n], character offsets int64 [n, 2]) of each text."""
    encodings = tok.encode_batch(list(texts), add_special_tokens=False)
    return [(np.asarray(e.ids, np.int32), np.asarray(e.offsets, np.int64).reshape(-1, 2))
            for e in encodings]


@dataclasses.dataclass(eq=False)
class XtokConfig(tfds.core.BuilderConfig):
    """The student's vocab_size, seq_len and tokenizer ('' = train one), the teacher's
    positions per window teacher_seq_len, max_documents (0 = all)."""

    vocab_size: int = 8192
    seq_len: int = 256
    teacher_seq_len: int = 1024
    max_documents: int = 0
    tokenizer: str = ""


def xtok_config(vocab_size: int, seq_len: int, teacher_seq_len: int, max_documents: int,
                tokenizer_path: str) -> XtokConfig:
    """The config of these options, named as in the module doc."""
    docs = f"d{max_documents}" if max_documents else "all"
    name = f"v{vocab_size}_l{seq_len}_b{teacher_seq_len}_{docs}"
    if tokenizer_path:
        name += f"_t{tokenizer.file_sha256(tokenizer_path)[:16]}"
    return XtokConfig(name=name, vocab_size=vocab_size, seq_len=seq_len,
                      teacher_seq_len=teacher_seq_len, max_documents=max_documents,
                      tokenizer=tokenizer_path)


class _XtokBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared body: subclasses set CORPUS (a key of `corpora.CORPORA`, plain documents)."""

    VERSION = tfds.core.Version("1.0.0")
    CORPUS: str

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        features = {k: tfds.features.Tensor(shape=(cfg.seq_len,), dtype=v)
                    for k, v in xtok_packing.FIELDS.items()}
        features.update({k: tfds.features.Tensor(shape=(cfg.teacher_seq_len,), dtype=v)
                         for k, v in xtok_packing.TEACHER_FIELDS.items()})
        return tfds.core.DatasetInfo(builder=self, description=type(self).__doc__,
                                     features=tfds.features.FeaturesDict(features),
                                     disable_shuffling=True, metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        splits = text_builders.split_documents(self.CORPUS, cfg.max_documents)
        path = os.fspath(self.data_path / text_builders.TOKENIZER_FILE)
        student = text_builders.save_tokenizer(path, cfg, splits["train"])
        teacher_path = os.fspath(self.data_path / TEACHER_TOKENIZER_FILE)
        byte_tokenizer().save(teacher_path)
        teacher = tokenizer.load(teacher_path)
        eot, t_eot = student.token_to_id(tokenizer.EOT), teacher.token_to_id(tokenizer.EOT)
        windows = {}
        for split, docs in splits.items():
            texts = [d.text for d in docs]
            pairs = [(*s, *t) for s, t in zip(encode_with_offsets(student, texts),
                                              encode_with_offsets(teacher, texts))]
            windows[split] = xtok_packing.pack(pairs, cfg.seq_len, cfg.teacher_seq_len, eot,
                                               t_eot)
        self.info.metadata.update(
            python_version=platform.python_version(),
            documents={split: len(docs) for split, docs in splits.items()},
            target_tokens={s: int(w["weights"].sum()) for s, w in windows.items()},
            teacher_target_tokens={s: int(w["teacher_weights"].sum()) for s, w in windows.items()},
            aligned_positions={s: int((w["align"] >= 0).sum()) for s, w in windows.items()},
            tokenizer_sha256=tokenizer.file_sha256(path),
            tokenizer_vocab_size=student.get_vocab_size(), eot_id=eot,
            pad_id=student.token_to_id(tokenizer.PAD),
            teacher_tokenizer_sha256=tokenizer.file_sha256(teacher_path),
            teacher_vocab_size=teacher.get_vocab_size(), teacher_eot_id=t_eot,
        )
        return {split: self._generate_examples(w) for split, w in windows.items()}

    def _generate_examples(self, windows):
        for i in range(len(windows["inputs"])):
            yield i, {name: values[i] for name, values in windows.items()}


class PystdlibXtok(_XtokBuilder):
    """`pystdlib` tokenised by the student's BPE and the teacher's byte tokenizer, aligned."""

    CORPUS = "pystdlib"


class PydocTopicsXtok(_XtokBuilder):
    """`pydoc_topics` tokenised by the student's BPE and the teacher's byte tokenizer."""

    CORPUS = "pydoc_topics"


XTOK_BUILDERS = {"pystdlib_xtok": PystdlibXtok, "pydoc_topics_xtok": PydocTopicsXtok}
CORPUS_OF = {name: cls.CORPUS for name, cls in XTOK_BUILDERS.items()}
