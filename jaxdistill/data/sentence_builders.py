"""Offline sentence datasets for sentence-embedding distillation, tokenised with a given
WordPiece (or any) `tokenizer.json` (e.g. the teacher's).

`pydoc_sentences`: the prose of `pydoc_topics` (topics in sorted key order) cut into
paragraphs at blank lines, paragraphs indented like code examples dropped, whitespace
collapsed, then cut into sentences after `.`, `!` or `?` followed by a capital letter;
sentences of fewer than `MIN_WORDS` words are dropped. Each sentence is a document.

Split, names and storage as the text datasets (`text_builders`): the first `max_documents`
sentences (0 = all), sentence i is `test` when i % TEST_EVERY == 0, else `train`; config
`v<vocab>_l<seq_len>_<docs>_t<tokenizer sha>`; one example per sentence, in order, in the
`packing.FIELDS` layout: `inputs` the token ids with the tokenizer's own special tokens
(`[CLS] ... [SEP]` for BERT), truncated to `seq_len` and padded with its pad id;
`segment_ids` 1 on real tokens, 0 on padding (the attention mask); `positions` 0, 1, ...
on real tokens; `weights` the mask as float; `targets` 0 (sentences have no next-token
targets). Metadata: python_version, documents and truncated sentences per split,
tokenizer_sha256, tokenizer_vocab_size, pad_id.
"""

import os
import platform
import re
import shutil
from collections.abc import Iterator

import numpy as np
from tokenizers import Tokenizer

from jaxdistill.data import corpora
from jaxdistill.data.text_builders import TOKENIZER_FILE, _TextBuilder, split_by_index
from jaxdistill.data.tokenizer import file_sha256

MIN_WORDS = 5
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    """The sentences of one help topic's prose (see module doc)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.strip() or paragraph.startswith("   "):
            continue
        out.extend(s for s in _SENTENCE_END.split(" ".join(paragraph.split()))
                   if len(s.split()) >= MIN_WORDS)
    return out


def pydoc_sentences() -> Iterator[corpora.Document]:
    """Every sentence of `corpora.pydoc_topics`, keyed `<topic>:<n>`."""
    for topic in corpora.pydoc_topics():
        for n, sentence in enumerate(sentences(topic.text)):
            yield corpora.Document(f"{topic.key}:{n}", sentence)


def pad_id(tokenizer: Tokenizer) -> int:
    """The id the tokenizer pads with (its padding setting, else 0, BERT's `[PAD]`)."""
    return int(tokenizer.padding["pad_id"]) if tokenizer.padding else 0


def encode(tokenizer: Tokenizer, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """The `packing.FIELDS` arrays [len(texts), seq_len] of `texts` (see module doc), plus
    `truncated` [len(texts)] (bool)."""
    tokenizer.enable_padding(length=seq_len, pad_id=pad_id(tokenizer))
    tokenizer.enable_truncation(seq_len)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    ids = np.array([e.ids for e in encodings], np.int32).reshape(-1, seq_len)
    mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(-1, seq_len)
    return {"inputs": ids, "targets": np.zeros_like(ids), "segment_ids": mask,
            "positions": np.where(mask > 0, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32),
            "weights": mask.astype(np.float32),
            "truncated": np.array([bool(e.overflowing) for e in encodings])}


class PydocSentences(_TextBuilder):
    """The sentences of the interpreter's help topics, one example each (module doc)."""

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        if not cfg.tokenizer:
            raise ValueError("config.data.tokenizer: a sentence dataset is tokenised with the "
                             "teacher's tokenizer.json; set its path")
        splits = split_by_index(pydoc_sentences(), cfg.max_documents)
        path = os.fspath(self.data_path / TOKENIZER_FILE)
        shutil.copyfile(cfg.tokenizer, path)
        tok = Tokenizer.from_file(path)
        rows = {split: encode(tok, [d.text for d in docs], cfg.seq_len)
                for split, docs in splits.items()}
        self.info.metadata.update(
            python_version=platform.python_version(),
            documents={split: len(docs) for split, docs in splits.items()},
            truncated={split: int(r.pop("truncated").sum()) for split, r in rows.items()},
            tokenizer_sha256=file_sha256(path),
            tokenizer_vocab_size=tok.get_vocab_size(),
            pad_id=pad_id(tok),
        )
        return {split: self._generate_examples(r) for split, r in rows.items()}


SENTENCE_BUILDERS = {"pydoc_sentences": PydocSentences}
