"""Offline causal-LM datasets: TFDS builders over `corpora`, tokenised and packed.

Each is written in array_record, in generation order (`disable_shuffling=True`), and
parameterised by a `TextConfig` made by `text_config`, named `v<vocab>_l<seq_len>_<docs>`
(`docs`: `all` or `d<max_documents>`), plus `_t<16 hex digits of its sha256>` when built with a
given tokenizer: e.g. `pystdlib/v8192_l256_all`, `pydoc_topics/v512_l64_d40`.

- Documents: the corpus' documents in its order (see `corpora`), the first `max_documents`
  (0 = all).
- Split: document i (0-based, in that order) is `test` when i % TEST_EVERY == 0, else `train`;
  any two or more documents give both splits, and the first N documents keep their split
  whatever N is.
- Tokenizer: trained (`tokenizer.train`) on the train documents' full text (prompt + text), or
  the given tokenizer.json; either way stored as `tokenizer.json` in the prepared dataset's
  directory, its sha256 in the metadata.
- Examples: the windows of `packing.pack` over each split's documents, in order (for
  `pystdlib_function_rows`: one function per window, `prompt_rows.rows`).
- Metadata (`metadata.json`, `builder.info.metadata`): python_version, documents and
  target_tokens (positions of weight 1) per split, tokenizer_sha256, tokenizer_vocab_size,
  eot_id, pad_id.
"""

import dataclasses
import itertools
import os
import platform
import shutil

import tensorflow_datasets as tfds

from jaxdistill.data import corpora, packing, prompt_rows, tokenizer

TEST_EVERY = 20
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(eq=False)
class TextConfig(tfds.core.BuilderConfig):
    """vocab_size and seq_len of the windows, max_documents (0 = all), tokenizer ('' = train
    one, else the path of a tokenizer.json)."""

    vocab_size: int = 8192
    seq_len: int = 256
    max_documents: int = 0
    tokenizer: str = ""


def text_config(vocab_size: int, seq_len: int, max_documents: int,
                tokenizer_path: str) -> TextConfig:
    """The config of these options, named as in the module doc."""
    docs = f"d{max_documents}" if max_documents else "all"
    name = f"v{vocab_size}_l{seq_len}_{docs}"
    if tokenizer_path:
        name += f"_t{tokenizer.file_sha256(tokenizer_path)[:16]}"
    return TextConfig(name=name, vocab_size=vocab_size, seq_len=seq_len,
                      max_documents=max_documents, tokenizer=tokenizer_path)


def _packable(tok, documents: list[corpora.Document]) -> list:
    """Each document as token ids, or (prompt ids, text ids) when it has a prompt."""
    texts = tokenizer.encode(tok, [d.text for d in documents])
    prompts = tokenizer.encode(tok, [d.prompt for d in documents])
    return [(p, t) if d.prompt else t for d, p, t in zip(documents, prompts, texts)]


def split_by_index(documents, max_documents: int) -> dict[str, list]:
    """The first `max_documents` of `documents` (0 = all) by split: document i is `test`
    when i % TEST_EVERY == 0, else `train`."""
    documents = list(itertools.islice(documents, max_documents or None))
    return {"train": [d for i, d in enumerate(documents) if i % TEST_EVERY],
            "test": [d for i, d in enumerate(documents) if i % TEST_EVERY == 0]}


def split_documents(corpus: str, max_documents: int) -> dict[str, list[corpora.Document]]:
    """The corpus' first `max_documents` documents (0 = all) by split (module doc)."""
    return split_by_index(corpora.CORPORA[corpus](), max_documents)


def save_tokenizer(path: str, cfg, train_documents: list[corpora.Document]):
    """Writes `cfg.tokenizer` (a copy), or one trained on `train_documents` with
    `cfg.vocab_size` tokens, to `path`; returns it loaded."""
    if cfg.tokenizer:
        shutil.copyfile(cfg.tokenizer, path)
    else:
        tokenizer.train([d.prompt + d.text for d in train_documents], cfg.vocab_size).save(path)
    return tokenizer.load(path)


class _TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared body: subclasses set CORPUS (a key of `corpora.CORPORA`)."""

    VERSION = tfds.core.Version("1.0.0")
    CORPUS: str
    WINDOWS = staticmethod(packing.pack)  # (documents, seq_len, eot_id) -> the windows' fields

    def _info(self) -> tfds.core.DatasetInfo:
        seq_len = self.builder_config.seq_len
        features = {
            name: tfds.features.Tensor(shape=(seq_len,), dtype=dtype)
            for name, dtype in packing.FIELDS.items()
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=type(self).__doc__,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        splits = split_documents(self.CORPUS, cfg.max_documents)
        path = os.fspath(self.data_path / TOKENIZER_FILE)
        tok = save_tokenizer(path, cfg, splits["train"])
        eot_id = tok.token_to_id(tokenizer.EOT)
        windows = {
            split: self.WINDOWS(_packable(tok, docs), cfg.seq_len, eot_id)
            for split, docs in splits.items()
        }
        self.info.metadata.update(
            python_version=platform.python_version(),
            documents={split: len(docs) for split, docs in splits.items()},
            target_tokens={split: int(w["weights"].sum()) for split, w in windows.items()},
            tokenizer_sha256=tokenizer.file_sha256(path),
            tokenizer_vocab_size=tok.get_vocab_size(),
            eot_id=eot_id,
            pad_id=tok.token_to_id(tokenizer.PAD),
        )
        return {split: self._generate_examples(w) for split, w in windows.items()}

    def _generate_examples(self, windows):
        for i in range(len(windows["inputs"])):
            yield i, {name: values[i] for name, values in windows.items()}


class Pystdlib(_TextBuilder):
    """The Python standard library's own `.py` sources, one document per file (`corpora`)."""

    CORPUS = "pystdlib"


class PydocTopics(_TextBuilder):
    """The interpreter's help topics (`pydoc_data.topics`), one document per topic."""

    CORPUS = "pydoc_topics"


class PystdlibFunctions(_TextBuilder):
    """Standard-library functions as prompt (`def` line + docstring) and completion (body)."""

    CORPUS = "pystdlib_functions"


class PystdlibFunctionRows(_TextBuilder):
    """`pystdlib_functions` one function per window (`prompt_rows`): what on-policy and
    sequence-level distillation sample completions into."""

    CORPUS = "pystdlib_functions"
    WINDOWS = staticmethod(prompt_rows.rows)


TEXT_BUILDERS = {"pystdlib": Pystdlib, "pydoc_topics": PydocTopics,
                 "pystdlib_functions": PystdlibFunctions,
                 "pystdlib_function_rows": PystdlibFunctionRows}
