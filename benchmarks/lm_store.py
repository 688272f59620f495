r"""The LM token store: bytes per token and the KD gap by k (`jaxdistill.store.tokens`).

From one trained teacher (`--teacher`, a finished teacher run of the config; else one is
trained into `<out>/teacher` by `jaxdistill.experiment.teacher_config`), for each k of
`--top_ks` (0 = all V tokens) a token store of the config's train split is written with
`jaxdistill.store.writer.write_store` (bfloat16 log-probabilities, uint16 ids) into
`<out>/store_k<k>`, and the config's student is distilled from it (`config.teacher.store`, no
teacher in memory) into `<out>/student_k<k>`; beside them the same student distilled online
(`<out>/student_online`). Same seed, init and batches everywhere, so the runs differ only in
what the KD term sees.

Measured per k: the store's record bytes per token (`store.json`) and its files' bytes per
token on disk; the KD of the first logged train record (`first_step_kd`: the mean over the
first `config.log_every` steps) against the online run's (same init and batches); and after
`config.num_steps` steps the held-out student perplexity, KL(teacher || student) per token and
top-1 agreement, each student evaluated beside the teacher (`train.evaluate_other_student`
with the online config). Output: `<out>/lm_store.json` and a Markdown table, printed.

Usage (from the repository root):
  python -m benchmarks.lm_store --config=configs/lm_kd.py --teacher=/tmp/lm_kd/teacher \
      --config.data.max_documents=60 --config.num_steps=100 --out=/tmp/lm_store
  python -m benchmarks.lm_store --config=configs/lm_kd.py:runlocal --quick --out=/tmp/lm_store_q
      # tiny: pydoc_topics, lm_tiny models, a few steps, k = 8 and all
With `--teacher` and a `data.max_documents` other than the teacher's, the dataset is built
with the teacher's own tokenizer (`config.data.tokenizer`), so the teacher reads it as it
was trained to.
"""

from __future__ import annotations

import copy
import json
import os
import time

import ml_collections
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from benchmarks.accuracy import enable_compilation_cache
from benchmarks.lm_perplexity import set_fields
from jaxdistill import data
from jaxdistill.experiment import teacher_config
from jaxdistill.run_setup import prepare_run
from jaxdistill.store.tokens import TokenStoreLayout
from jaxdistill.store.writer import write_store
from jaxdistill.train import evaluate_other_student, train_and_evaluate

FLAGS = flags.FLAGS
QUICK = {"data.name": "pydoc_topics", "data.max_documents": 4, "data.vocab_size": 512,
         "data.seq_len": 32, "student.model": "lm_tiny", "teacher.model": "lm_tiny",
         "batch_size": 8, "eval_batch_size": 32, "num_steps": 4, "teacher.train.num_steps": 4,
         "lm.chunk_size": 16, "lm.sample_tokens": 8, "log_every": 1, "eval_every": 0,
         "checkpoint_every": 0, "optimizer.warmup_steps": 0, "baseline": False}


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", "configs/lm_kd.py", "causal-LM run config file.",
                                    lock_config=False)
    flags.DEFINE_string("teacher", "", "a finished teacher run of the config ('' = train one)")
    flags.DEFINE_list("top_ks", ["8", "32", "128", "0"], "store sizes k (0 = all V tokens)")
    flags.DEFINE_string("out", "", "output directory (required)")
    flags.DEFINE_bool("quick", False, "tiny mode: pydoc_topics, lm_tiny, a few steps, k 8 and 0")
    flags.DEFINE_list("gap_ks", [], "instead: the truncation gap of the KD loss at these k for "
                      "<out>/student_online on the eval split (`truncation_gap`), no training")


def _set(config, fields: dict):
    """A copy of `config` with dotted `fields` set."""
    config = copy.deepcopy(config)
    with config.unlocked():
        set_fields(config, fields)
    return config


def _with_teacher_tokenizer(config, teacher_dir: str):
    """`config` reading its dataset with the teacher run's tokenizer when the teacher was
    trained on another document count (its BPE is trained on its own train documents)."""
    with open(os.path.join(teacher_dir, "config.json")) as f:
        trained = ml_collections.ConfigDict(json.load(f)["data"])
    if trained.max_documents == config.data.max_documents or config.data.tokenizer:
        return config
    return _set(config, {"data.tokenizer": data.prepare_from_config(trained).tokenizer})


def _disk_bytes(path: str, meta: dict) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in meta["files"])


def _first_step(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return next(r for r in map(json.loads, f) if r["split"] == "train")


def _train(config, workdir: str, log) -> dict:
    """train_and_evaluate, reusing a finished run of the same workdir."""
    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            return json.load(f)
    start = time.time()
    result = train_and_evaluate(config, workdir)
    log(f"{workdir}: {time.time() - start:.0f} s")
    return result


def run(config, out: str, top_ks, teacher_dir: str = "", log=print, save=None) -> dict:
    """The measurements of the module doc; returns the JSON record (also given to `save`
    after each k, so an interrupted benchmark keeps the rows it finished)."""
    os.makedirs(out, exist_ok=True)
    if not teacher_dir:
        teacher_dir = os.path.join(out, "teacher")
        _train(teacher_config(config), teacher_dir, log)
    else:
        config = _with_teacher_tokenizer(config, teacher_dir)
    config = _set(config, {"teacher.checkpoint": teacher_dir, "baseline": False})
    setup = prepare_run(config)
    info = setup.info
    online_dir = os.path.join(out, "student_online")
    online = _train(config, online_dir, log)
    online_first = _first_step(online_dir)
    plain = {k: TokenStoreLayout(min(k, info.num_classes), info.num_classes, info.seq_len)
             for k in (64, 128)}
    rows = []
    result = {"config": {"dataset": info.tfds_name, "vocab_size": info.num_classes,
                         "seq_len": info.seq_len, "train_windows": info.splits["train"],
                         "student": config.student.model, "teacher": config.teacher.model,
                         "num_steps": config.num_steps, "objective": config.objective.to_dict(),
                         "teacher_checkpoint": teacher_dir},
              "online": {"perplexity": online["student_perplexity"], "kl": online["kl"],
                         "agreement": online["agreement"],
                         "teacher_perplexity": online["teacher_perplexity"],
                         "first_step_kd": online_first["kd"]},
              "rows": rows,
              "reference_bytes_per_token": {
                  f"k{k}_bf16_uint16": layout.bytes_per_token for k, layout in plain.items()}}
    for k in top_ks:
        store = os.path.join(out, f"store_k{k}")
        if not os.path.exists(os.path.join(store, "store.json")):
            start = time.time()
            write_store(config, store, top_k=k, log=log)
            log(f"{store}: written in {time.time() - start:.0f} s")
        with open(os.path.join(store, "store.json")) as f:
            meta = json.load(f)
        tokens = meta["num_examples"] * meta["seq_len"]
        workdir = os.path.join(out, f"student_k{k}")
        _train(_set(config, {"teacher.store": store}), workdir, log)
        held_out = evaluate_other_student(setup, workdir)
        first = _first_step(workdir)
        rows.append({"top_k": meta["top_k"], "bytes_per_token": meta["bytes_per_token"],
                     "disk_bytes_per_token": _disk_bytes(store, meta) / tokens,
                     "first_step_kd": first["kd"], "online_first_step_kd": online_first["kd"],
                     "first_step_kd_gap": first["kd"] - online_first["kd"],
                     "perplexity": held_out["perplexity"], "kl": held_out["kl"],
                     "agreement": held_out["agreement"]})
        if save is not None:
            save(result)
    return result


def truncation_gap(setup, student_dir: str, top_ks) -> list[dict]:
    """Per k, on the eval split: the mean per-token KD (T = 1) of the student in
    `student_dir` from the bucketed top-k teacher, against the full KL(teacher || student),
    and the teacher's mean mass outside its top k. No training: the gap the truncation makes
    in the loss itself."""
    import jax
    import jax.numpy as jnp

    from jaxdistill import checkpoint, losses
    from jaxdistill.losses.sparse_kd import TeacherEntries, bucket_logits
    from jaxdistill.step import teacher_eval_logits
    from jaxdistill.store.token_writer import top_k_per_position
    from jaxdistill.train import load_teachers
    teacher = load_teachers(setup)
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    student = checkpoint.load_teacher(student_dir, abstract, field=f"the run in {student_dir}")
    ctx = setup.ctx

    @jax.jit
    def sums(student, teacher, batch):
        t = teacher_eval_logits(ctx, teacher, batch)
        inputs = ctx.task.inputs(batch, None, train=False)
        model = nnx.merge(ctx.student_def, student["params"], student["batch_stats"])
        s = model(inputs.x, train=False, **inputs.kwargs)[0]
        w = batch["weights"] * batch["mask"][:, None]
        out = {"count": jnp.sum(w), "full": jnp.sum(w * losses.kd_loss(s, t, temperature=1.0))}
        for k in top_ks:
            entries = TeacherEntries(*top_k_per_position(t, k))
            out[f"kd{k}"] = jnp.sum(w * losses.kd_loss(*bucket_logits(s, entries), temperature=1.0))
            out[f"tail{k}"] = jnp.sum(w * jnp.exp(entries.log_tail))
        return out
    total = None
    for batch in data.make_eval_iterator(setup.info, split=setup.config.data.eval_split,
                                         reader="grain",
                                         global_batch_size=setup.config.eval_batch_size,
                                         sharding=setup.batch_sharding):
        got = jax.device_get(sums(student, teacher, batch))
        total = got if total is None else {k: total[k] + got[k] for k in total}
    n, full = float(total["count"]), float(total["full"]) / float(total["count"])
    return [{"top_k": k, "kd": float(total[f"kd{k}"]) / n, "full_kl": full,
             "relative_gap": float(total[f"kd{k}"]) / n / full - 1.0,
             "teacher_tail_mass": float(total[f"tail{k}"]) / n,
             "bytes_per_token": TokenStoreLayout(k, setup.info.num_classes,
                                                 setup.info.seq_len).bytes_per_token}
            for k in top_ks]


def markdown(result: dict) -> str:
    """The table of `run`'s record."""
    o = result["online"]
    lines = [("| k | B/token (record) | B/token (disk) | first logged KD (gap vs online) | "
              "held-out ppl | KL(teacher‖student) | agreement |"), "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['top_k']} | {r['bytes_per_token']:.1f} | "
                     f"{r['disk_bytes_per_token']:.1f} | {r['first_step_kd']:.4f} "
                     f"({r['first_step_kd_gap']:+.4f}) | {r['perplexity']:.3f} | "
                     f"{r['kl']:.4f} | {r['agreement']:.4f} |")
    lines.append(f"| online | - | - | {o['first_step_kd']:.4f} | {o['perplexity']:.3f} | "
                 f"{o['kl']:.4f} | {o['agreement']:.4f} |")
    lines.append(f"\nteacher perplexity {o['teacher_perplexity']:.3f}")
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    enable_compilation_cache(os.path.join(FLAGS.out, "jax_cache"))
    config = FLAGS.config
    top_ks = [int(k) for k in FLAGS.top_ks]
    if FLAGS.quick:
        config, top_ks = _set(config, QUICK), [8, 0]
    if FLAGS.gap_ks:
        config = _with_teacher_tokenizer(config, FLAGS.teacher) if FLAGS.teacher else config
        config = _set(config, {"teacher.checkpoint": FLAGS.teacher or os.path.join(
            FLAGS.out, "teacher"), "baseline": False})
        rows = truncation_gap(prepare_run(config), os.path.join(FLAGS.out, "student_online"),
                              [int(k) for k in FLAGS.gap_ks])
        with open(os.path.join(FLAGS.out, "lm_store_gap.json"), "w") as f:
            json.dump(rows, f, indent=1)
        print("| k | B/token | teacher mass outside top k | KD from top k | full KL | gap |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['top_k']} | {r['bytes_per_token']:.1f} | {r['teacher_tail_mass']:.4f} | "
                  f"{r['kd']:.4f} | {r['full_kl']:.4f} | {r['relative_gap']:+.2%} |")
        return

    def save(result):
        with open(os.path.join(FLAGS.out, "lm_store.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(markdown(result), flush=True)
    save(run(config, FLAGS.out, top_ks, FLAGS.teacher, save=save))


if __name__ == "__main__":
    define_flags()
    app.run(main)
