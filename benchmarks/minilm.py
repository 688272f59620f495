r"""all-MiniLM-L6-v2 distilled into a 2-layer student: held-out embedding agreement, size and
encode speed of the teacher and of each student.

Runs configs/minilm_kd.py (or the config given) twice through `jaxdistill.experiment.run`:
`distilled` (the config as given: the student starts from the teacher's embeddings and the
layers in config.student.hf_layers) and `random_kd` (the same student and KD objective from a
random initialisation: config.student.hf_checkpoint = ''). A run directory whose summary.json
is at config.num_steps is read back, not retrained. Then, on the held-out split (every 20th
sentence), for the teacher and for three students -- `init` (the teacher-layer
initialisation, untrained: the baseline that says what the training adds), `random_kd` and
`distilled` -- it reports:

- cosine: the mean cosine between the student's and the teacher's normalised mean-pooled
  embeddings of the same sentence (float64 on the host);
- nn_agreement: the fraction of held-out sentences whose nearest other held-out sentence
  (by cosine) is the same under the student's embeddings as under the teacher's;
- params, and encode speed in sentences/s: one jitted forward of a batch of
  `--encode_batch` held-out sentences at the dataset's sequence length, on this machine's
  JAX CPU backend, the median of `--repeats` timed calls after a warm-up call.

Output: `<out>/minilm.json` (flags, environment, rows, run summaries) and `<out>/minilm.md`
(the Markdown table, also printed). `--norandom_kd` leaves the random-init arm out.

Usage (from the repository root):
  python -m benchmarks.minilm --out=/tmp/minilm_bench
  python -m benchmarks.minilm --config=configs/minilm_kd.py:runlocal --out=/tmp/minilm_quick
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxdistill import checkpoint, data, experiment, hf, parallel
from jaxdistill.hf import bert as hf_bert
from jaxdistill.hf import files
from jaxdistill.run_setup import prepare_run
from jaxdistill.tasks.sentence_embedding import prepare

_CONFIG = config_flags.DEFINE_config_file("config", "configs/minilm_kd.py", "Distillation config.")
_OUT = flags.DEFINE_string("out", "/tmp/minilm_bench", "Directory for the runs and the report.")
_ENCODE_BATCH = flags.DEFINE_integer("encode_batch", 64, "Sentences per timed encode call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed encode calls per model.")
_RANDOM_KD = flags.DEFINE_bool("random_kd", True, "Also train and report the random-init student.")


def held_out(config) -> dict[str, np.ndarray]:
    """The held-out split's `inputs` and `segment_ids` (the attention mask), in order."""
    info = prepare(config.data)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = {"inputs": [], "segment_ids": []}
    for batch in data.make_eval_iterator(info, split=config.data.eval_split, reader="grain",
                                         global_batch_size=64,
                                         sharding=parallel.batch_sharding(mesh)):
        real = np.asarray(batch["mask"]) > 0
        for key, values in rows.items():
            values.append(np.asarray(batch[key])[real])
    return {key: np.concatenate(values) for key, values in rows.items()}


def encoder(model):
    """A jitted `(ids, mask) -> [B, D]` mean-pooled embeddings of an NNX `Bert`."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, attention_mask=mask)[1]["embedding"]
    return lambda ids, mask: encode(state, ids, mask)


def embeddings(model, rows, batch: int = 64) -> np.ndarray:
    """[N, D] float64 unit embeddings of the held-out `rows`."""
    encode = encoder(model)
    parts = [np.asarray(encode(jnp.asarray(rows["inputs"][i:i + batch]),
                               jnp.asarray(rows["segment_ids"][i:i + batch])), np.float64)
             for i in range(0, len(rows["inputs"]), batch)]
    e = np.concatenate(parts)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def nearest_other(unit: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row (cosine)."""
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=-1)


def encode_speed(model, rows, batch: int, repeats: int) -> float:
    """Sentences/s of one jitted forward of `batch` held-out sentences (median of repeats)."""
    encode = encoder(model)
    idx = np.arange(batch) % len(rows["inputs"])
    ids, mask = jnp.asarray(rows["inputs"][idx]), jnp.asarray(rows["segment_ids"][idx])
    jax.block_until_ready(encode(ids, mask))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(encode(ids, mask))
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def run_student(config, workdir: str):
    """The final student of a run of `config` in `workdir` (trained here unless finished)."""
    summary_path = os.path.join(workdir, "summary.json")
    done = False
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            done = json.load(f).get("steps") == config.num_steps
    if not done:
        experiment.run(config, workdir)
    setup = prepare_run(config)
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    restored = checkpoint.load_teacher(workdir, abstract, field=f"the run in {workdir}")
    with open(summary_path) as f:
        summary = json.load(f)
    return nnx.merge(setup.ctx.student_def, restored["params"], restored["batch_stats"]), summary


def n_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def markdown(rows: list[dict], config) -> str:
    title = (f"all-MiniLM-L6-v2 -> {config.student.model} on held-out pydoc_sentences "
             f"({rows[0]['sentences']} sentences, seq_len {config.data.seq_len}), "
             f"{config.num_steps} steps x {config.batch_size} sentences")
    header = ("| model | init | trained | params | cosine to teacher | NN agreement | "
              "encode sentences/s |")
    lines = [title, "", header, "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        cos = "1" if r["name"] == "teacher" else f"{r['cosine']:.4f}"
        nn = "1" if r["name"] == "teacher" else f"{r['nn_agreement']:.3f}"
        lines.append(f"| {r['name']} | {r['init']} | {r['trained']} | {r['params'] / 1e6:.2f}M | "
                     f"{cos} | {nn} | {r['sentences_per_second']:.0f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    os.makedirs(_OUT.value, exist_ok=True)
    random_config = copy.deepcopy(config)
    with random_config.unlocked():
        random_config.student.hf_checkpoint, random_config.student.hf_layers = "", ()
    distilled, d_summary = run_student(config, os.path.join(_OUT.value, "distilled"))
    summaries = {"distilled": d_summary}
    if _RANDOM_KD.value:
        random_kd, summaries["random_kd"] = run_student(random_config,
                                                        os.path.join(_OUT.value, "random_kd"))
    path, length = config.teacher.hf_checkpoint, config.data.seq_len
    teacher, _ = hf.from_pretrained(path, max_seq_len=length)
    init, _ = hf_bert.load(files.read_config(path), files.read_tensors(path),
                           layers=tuple(config.student.hf_layers), max_seq_len=length)
    rows = held_out(config)
    t_unit = embeddings(teacher, rows)
    t_nn = nearest_other(t_unit)
    layers = ", ".join(map(str, config.student.hf_layers))
    models = [("teacher", teacher, "pretrained", "-"),
              ("init", init, f"teacher layers {layers}", "no"),
              *([("random_kd", random_kd, "random", "KD")] if _RANDOM_KD.value else []),
              ("distilled", distilled, f"teacher layers {layers}", "KD")]
    table = []
    for name, model, how, trained in models:
        unit = embeddings(model, rows)
        table.append({"name": name, "init": how, "trained": trained, "params": n_params(model),
                      "sentences": len(unit),
                      "cosine": float(np.mean(np.sum(unit * t_unit, -1))),
                      "nn_agreement": float(np.mean(nearest_other(unit) == t_nn)),
                      "sentences_per_second": encode_speed(model, rows, _ENCODE_BATCH.value,
                                                           _REPEATS.value)})
    report = {"config": json.loads(config.to_json_best_effort()), "rows": table,
              "summaries": summaries,
              "flags": {"encode_batch": _ENCODE_BATCH.value, "repeats": _REPEATS.value},
              "environment": {"python": platform.python_version(), "jax": jax.__version__,
                              "backend": jax.default_backend(), "devices": jax.device_count(),
                              "cpus": os.cpu_count(), "machine": platform.machine()}}
    with open(os.path.join(_OUT.value, "minilm.json"), "w") as f:
        json.dump(report, f, indent=2)
    text = markdown(table, config)
    with open(os.path.join(_OUT.value, "minilm.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
