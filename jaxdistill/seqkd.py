"""Sequence-level knowledge distillation of a decoder LM (Kim & Rush, "Sequence-Level
Knowledge Distillation", EMNLP 2016): the teacher's own completions of the dataset's prompts
become the student's training targets.

``config.seqkd.enabled`` on a prompt/completion rows dataset (``pystdlib_function_rows``):
before training, the frozen teacher completes every row's prompt of the train and test
splits (``onpolicy.rollout``: the jitted KV-cache sampler, ``config.seqkd.temperature`` /
``top_k`` / ``top_p`` / ``greedy``, batch n keyed by ``fold_in(key(config.seqkd.seed), n)``),
and the rows, rebuilt around those completions (``onpolicy.completion_batch``: weights on the
generated tokens only), are written once as the TFDS dataset ``seqkd_completions/<fingerprint>``
in the source dataset's data_dir. The fingerprint (16 hex digits of a sha256) covers the
teacher's params, the source dataset (name, config, tokenizer) and the sampling settings, so a
rerun, or another run with the same teacher, prompts and settings, reads it back without
generating; anything else gets its own. The student trains on its train split; evaluation
stays on the source dataset's held-out split, and the test split holds the teacher's samples
of the held-out prompts.

Build it alone (the run's teacher must be trained already)::

    python -m jaxdistill.seqkd --config=configs/lm_onpolicy.py:seqkd --workdir=/tmp/lm_onpolicy
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxdistill import onpolicy
from jaxdistill.data import packing, sampling
from jaxdistill.data.source import DatasetInfo, tfds_builder

NAME = "seqkd_completions"  # the TFDS name of the generated datasets
SPLITS = ("train", "test")


@dataclasses.dataclass(eq=False)
class SeqkdConfig(tfds.core.BuilderConfig):
    """name: the fingerprint; generate: () -> {split: `packing.FIELDS` arrays}, called only
    when the dataset is not there yet; metadata: written with it."""

    generate: Callable[[], dict] | None = None
    metadata: dict | None = None


class SeqkdCompletions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A teacher's completions of a rows dataset's prompts (see the module doc)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        seq_len = self.builder_config.metadata["seq_len"]
        return tfds.core.DatasetInfo(
            builder=self, description=type(self).__doc__, disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                name: tfds.features.Tensor(shape=(seq_len,), dtype=dtype)
                for name, dtype in packing.FIELDS.items()}),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        splits = self.builder_config.generate()
        self.info.metadata.update(
            **self.builder_config.metadata,
            target_tokens={k: int(v["weights"].sum()) for k, v in splits.items()})
        return {split: self._generate_examples(fields) for split, fields in splits.items()}

    def _generate_examples(self, fields):
        for i in range(len(fields["inputs"])):
            yield i, {name: values[i] for name, values in fields.items()}


def fingerprint(teacher_sha256: str, info: DatasetInfo, settings: onpolicy.Sampling,
                seed: int) -> str:
    """16 hex digits of the sha256 of what the generated dataset depends on."""
    key = {"teacher": teacher_sha256, "dataset": info.tfds_name,
           "tokenizer": info.tokenizer_sha256, "splits": {s: info.splits[s] for s in SPLITS},
           "sampling": dataclasses.asdict(settings), "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def complete_split(graphdef, params, info: DatasetInfo, split: str,
                   settings: onpolicy.Sampling, seed: int, batch_size: int) -> dict:
    """`packing.FIELDS` arrays of every row of `split`, in order, its completion replaced
    by the model's (batch n sampled with `fold_in(key(seed), n)`; the last batch padded)."""
    source = tfds_builder(info.tfds_name, info.data_dir).as_data_source(split)
    num, meta = len(source), info.metadata
    out = {name: [] for name in packing.FIELDS}
    for n, start in enumerate(range(0, num, batch_size)):
        indices = np.arange(start, min(start + batch_size, num))
        batch = sampling.token_batch(source.__getitems__(indices.tolist()), indices,
                                     batch_size, info.seq_len)
        batch = {k: jnp.asarray(batch[k]) for k in ("inputs", "weights")}  # padding rows:
        # a one-token prompt (no weighted target), dropped below
        sample = onpolicy.rollout(graphdef, params, batch,
                                  jax.random.fold_in(jax.random.key(seed), n), settings,
                                  eos_id=int(meta["eot_id"]), pad_id=int(meta["pad_id"]))
        rows = jax.device_get(onpolicy.completion_batch(batch, sample))
        for name, dtype in packing.FIELDS.items():
            out[name].append(np.asarray(rows[name][:len(indices)], dtype))
    return {name: np.concatenate(values) for name, values in out.items()}


def check(config, info: DatasetInfo) -> None:
    """Refuses `config.seqkd` settings that cannot work, before anything compiles (a config
    written before these fields existed has none)."""
    if "seqkd" not in config:
        return
    onpolicy.sampling_from_config(config.seqkd, "config.seqkd")
    if not config.seqkd.enabled:
        return
    if info.name != onpolicy.ROW_DATASETS[0]:
        raise ValueError(f"config.seqkd.enabled completes the prompts of a rows dataset: set "
                         f"config.data.name='{onpolicy.ROW_DATASETS[0]}', not {info.name!r}")
    if not config.teacher.model or config.teacher.store:
        raise ValueError("config.seqkd.enabled: the teacher generates the completions, so it "
                         "must run online (a config.teacher.model, no config.teacher.store)")
    if config.get("population", {}).get("size", 0):
        raise ValueError("config.seqkd.enabled: a population (config.population.size > 0) "
                         "reads the dataset itself; set config.population.size=0")
    if not isinstance(config.seqkd.batch_size, int) or config.seqkd.batch_size < 1:
        raise ValueError(f"config.seqkd.batch_size must be a positive int, got "
                         f"{config.seqkd.batch_size!r}")


def build(config, info: DatasetInfo, teacher_def, teacher: dict) -> DatasetInfo:
    """The generated dataset of `config.seqkd` for `info`'s prompts (written unless there
    already), as the `DatasetInfo` the train iterator reads."""
    from jaxdistill.store import teacher_sha256
    settings = onpolicy.sampling_from_config(config.seqkd, "config.seqkd")
    seed, batch_size = int(config.seqkd.seed), int(config.seqkd.batch_size)
    digest = fingerprint(teacher_sha256(teacher), info, settings, seed)
    metadata = {**{k: info.metadata[k] for k in ("eot_id", "pad_id", "tokenizer_sha256",
                                                  "tokenizer_vocab_size")},
                "seq_len": info.seq_len, "source": info.tfds_name,
                "sampling": dataclasses.asdict(settings), "seed": seed}

    def generate() -> dict:
        return {split: complete_split(teacher_def, teacher["params"], info, split, settings,
                                      seed, batch_size) for split in SPLITS}

    builder = SeqkdCompletions(data_dir=info.data_dir, file_format="array_record",
                               config=SeqkdConfig(name=digest, generate=generate,
                                                  metadata=metadata))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return dataclasses.replace(
        info, name=NAME, builder_config=digest, metadata=dict(builder.info.metadata),
        splits={k: v.num_examples for k, v in builder.info.splits.items()})


def train_info(setup, teacher) -> DatasetInfo:
    """The dataset a run trains on: `setup.info`, or with `config.seqkd.enabled` the
    teacher's completions of it (`build`)."""
    if not setup.config.get("seqkd", {}).get("enabled", False):
        return setup.info
    return build(setup.config, setup.info, setup.ctx.teacher_def, teacher)


def dataset_dir(info: DatasetInfo) -> str:
    """Where a prepared dataset's files are."""
    return os.fspath(tfds_builder(info.tfds_name, info.data_dir).data_path)


def _main(argv) -> None:
    from absl import flags

    from jaxdistill import validate
    from jaxdistill.run_setup import prepare_run
    from jaxdistill.train import load_teachers
    del argv
    with validate.reported():
        config = flags.FLAGS.config
        validate.check_config(config)
        if not config.seqkd.enabled:
            raise ValueError("config.seqkd.enabled is False: nothing to generate")
        if not config.teacher.checkpoint:
            config.teacher.checkpoint = os.path.join(flags.FLAGS.workdir, "teacher")
        setup = prepare_run(config)
        info = train_info(setup, load_teachers(setup))
        print(f"{info.tfds_name}: {info.splits} in {dataset_dir(info)}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from jaxdistill import validate
    config_flags.DEFINE_config_file("config", None, "Run config file.", lock_config=False)
    flags.DEFINE_string("workdir", None, "The run's workdir (its teacher/ when "
                        "config.teacher.checkpoint is empty).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main, flags_parser=validate.flags_parser())
