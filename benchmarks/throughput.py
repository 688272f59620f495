r"""Throughput of the jaxdistill step: student alone, teacher forward, online KD, KD + features.

Every mode is built from the real package: a config (`benchmarks/pairs.py`) goes through
`jaxdistill.run_setup.prepare_run`, the train step is `jaxdistill.train.compile_steps`, the teacher
forward is `jaxdistill.step.teacher_outputs`. Teacher variables are random (no checkpoint is
needed to time a step), created by the teacher's model factory straight into their shardings;
batches are synthetic and placed with the run's batch sharding.

Modes (`--modes`; all but population by default):
  student          the student's supervised train step (objective: ce only, no teacher)
  teacher_forward  the frozen teacher's forward pass alone (eval mode), jitted: its logits, or
                   in a chunked LM step its hidden states and then its head chunk by chunk
  kd_online        the jaxdistill train step with ce + kd, teacher inside the step
  feature          the train step with ce + kd + the pair's feature term (at or hint)
  population       `--population_sizes` students (ce + kd, one temperature each) in one
                   jaxdistill.population step, the teacher once per batch; each record has
                   `population_size`, the whole step's `step_time_s`, `member_step_time_s`
                   (/ N) and `member_goal_s` = 1.1 x student step + teacher forward / N
                   (issue 12's goal, from the same group's student and teacher_forward)
  kd_offline       the train step with ce + kd, the teacher's outputs read from the batch as an
                   offline teacher store feeds them (`--store_top_k` logits per example; no
                   augmentation, which a store excludes; LM pairs: a token store's top-k
                   log-probabilities per position, bfloat16 + uint16 ids, sparse KD). Reading
                   the records is the host's work beside the step (the data layer's prefetch)
                   and is not timed here.

LM pairs (`lm`: lm_base -> lm_20m at V = 32,768, L = 1,024, batch 8, for an accelerator;
`lm_quick`: lm_student -> lm_tiny at the same V and L, batch 2, for a CPU; `--pairs=lm --quick`
measures lm_quick) have the modes student, teacher_forward, kd_online and kd_offline, each in
both loss forms (`--loss_impls`): `chunked` (config.lm.chunk_size = `--chunk_size`, default 64: every
logit term chunk by chunk through each model's head under `jax.checkpoint`,
`jaxdistill.losses.chunked`) and `naive` (chunk_size 0: [B, L, V] logits). Each form is its own
group (own peak matmul); its records carry `loss_impl`, `tokens_per_second`,
`flops_per_token`, and the chunked records `memory_peak_ratio_vs_naive` (their
`memory_peak_bytes` over the naive record's of the same mode). `--vocab_size`, `--seq_len` and
`--chunk_size` change an LM pair's shapes (0: the pair's). Train-step records carry
`first_step_loss` and `first_step_metrics` (the first call's, from the same initial state,
teacher and batch in both forms, so the forms' first losses agree).

Timing: `--warmup` steps, then `--repeats` chunks of `--steps` steps each; one
`jax.block_until_ready` per chunk (no host sync inside it); per-step time = chunk / steps;
the table reports the median and p10/p90 over chunks. The modes of one (pair, batch size,
loss form) are compiled together and take turns chunk by chunk, with the peak matmul, so a change in
machine load hits them all alike.

FLOPs per step come from XLA's `cost_analysis()` of the compiled step (per device, times the
devices of the mesh), or, where that count is under 90% of the step's matmul + convolution
FLOPs counted from its jaxpr (GPU: XLA leaves cuBLAS / cuDNN calls partly uncounted; CPU: the
chunked LM steps, whose scan body XLA counts once, not once per chunk), from that count
(`jaxdistill.flops`); `flops_source` says which ('compiled' | 'dot_conv'). The peak
FLOP/s is a jitted [d*N, N] @ [N, N] matmul (`--peak_size` N) in the step's dtype, its rows
split over the same mesh's d data shards, timed in turn with each group;
`fraction_of_peak` = achieved / peak. kd_online and kd_offline records carry `kd_time_ratio`
(KD step / student step time, same batch: the median over chunks of KD chunk / the student
chunk timed next to it) and `kd_ideal_ratio` (1 + teacher forward FLOPs / student step FLOPs;
1 for kd_offline, whose teacher ran when the store was written).

Memory: `memory_peak_bytes` is XLA's compiled estimate (`memory_analysis()`): its
`peak_memory_in_bytes` (kept as `memory_peak_reported_bytes`) where that counts the program's
temporaries (GPU), else arguments + outputs - aliased + temporaries (the CPU backend of jax 0.10
reports arguments + outputs alone as the peak; records written before this rule carry that);
`device_peak_bytes_in_use` is the device allocator's peak so far in the process
(`Device.memory_stats()`, None where the backend has none, e.g. CPU).

Usage (from the repository root):
  python -m benchmarks.throughput --quick                       # mlp pair, batch 256, ~1 min on CPU
  python -m benchmarks.throughput --quick --modes=student,teacher_forward,kd_online,population
  python -m benchmarks.throughput --pairs=lm --quick --out=DIR  # lm_quick, both forms, CPU
  python -m benchmarks.throughput --pairs=resnet,vit --batch_sizes=256,1024 \
      --dtype=bfloat16 --out=/tmp/bench                          # writes /tmp/bench/throughput.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill import parallel
from jaxdistill.flops import choose_flops, jaxpr_dot_conv_flops, xla_flops
from jaxdistill.losses.chunked import HIDDEN, LogitChunks, weighted_sums
from jaxdistill.run_setup import DTYPES, RunSetup, model_factory, prepare_run
from jaxdistill.step import output_head, teacher_outputs
from jaxdistill.store import StoreLayout, topk_entries
from jaxdistill.store.token_writer import top_k_per_position
from jaxdistill.store.tokens import TokenStoreLayout
from jaxdistill.train import compile_steps

if __package__:  # python -m benchmarks.throughput
    from benchmarks import pairs as pairs_lib
else:  # python benchmarks/throughput.py
    import pairs as pairs_lib

MODES = ("student", "teacher_forward", "kd_online", "feature", "kd_offline", "population")
DEFAULT_MODES = MODES[:-1]  # --modes' default: population (several programs) when asked for
POPULATION_SIZES = (1, 4, 16)  # --population_sizes' default
KD_MODES = ("kd_online", "kd_offline")  # records that get kd_time_ratio / kd_ideal_ratio

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined by `main`'s caller only, so that importing this
    module next to another benchmark defines nothing twice)."""
    flags.DEFINE_list("pairs", list(pairs_lib.DEFAULT_PAIRS),
                      f"pairs to measure: {list(pairs_lib.PAIRS)}")
    flags.DEFINE_list("modes", list(DEFAULT_MODES), f"modes to measure: {list(MODES)}")
    flags.DEFINE_list("batch_sizes", [], "global batch sizes: N (every pair) or PAIR:N (that "
                      "pair only, in place of the plain entries); none = each pair's own "
                      "(mlp, resnet, vit: 128,256; lm: 8; --quick: mlp 256, lm_quick 2)")
    flags.DEFINE_list("loss_impls", list(pairs_lib.LOSS_IMPLS),
                      "LM pairs: the loss forms measured (chunked: config.lm.chunk_size = "
                      "--chunk_size; naive: 0)")
    flags.DEFINE_integer("vocab_size", 0, "LM pairs: vocabulary (0 = the pair's, 32768)")
    flags.DEFINE_integer("seq_len", 0, "LM pairs: sequence length (0 = the pair's, 1024)")
    flags.DEFINE_integer("chunk_size", 0, "LM pairs: positions per chunk of the chunked form "
                         "(0 = the pair's, 64; at most the length; must divide it)")
    flags.DEFINE_enum("dtype", "float32", list(DTYPES),
                      "compute dtype of student and teacher (bfloat16: student compute and the "
                      "teacher's params and compute in bf16; student params stay float32)")
    flags.DEFINE_integer("warmup", TIMING["warmup"], "untimed steps after compilation")
    flags.DEFINE_integer("steps", TIMING["steps"], "steps per timed chunk (one host sync per "
                         "chunk)")
    flags.DEFINE_integer("repeats", TIMING["repeats"], "timed chunks; median and p10/p90 are "
                         "taken over them")
    flags.DEFINE_integer("peak_size", 0, "N of the NxN peak-FLOP/s matmul (per data shard); "
                         "0 = 2048 on CPU, 8192 on accelerators")
    flags.DEFINE_integer("seed", 0, "seed of the random parameters and synthetic batches")
    flags.DEFINE_list("population_sizes", [str(n) for n in POPULATION_SIZES],
                      "population mode: the numbers of students measured")
    flags.DEFINE_integer("store_top_k", 0, "kd_offline: logits per example in the store "
                         "(0 = all classes, as `jaxdistill.teacher_store --top_k=0`)")
    flags.DEFINE_string("out", "", "if set, writes <out>/throughput.json (rewritten after each "
                        "pair and batch size, so an interrupted run keeps what it measured)")
    flags.DEFINE_string("table_from", "", "print the table of an existing throughput.json and exit")
    flags.DEFINE_bool("memory_only", False, "compile every program and record its memory and "
                      "FLOPs, timing nothing (e.g. accelerator-size programs on a CPU)")
    flags.DEFINE_bool("quick", False, "the mlp pair at batch 256, all modes (about a minute on CPU); "
                      "with --pairs=lm, lm_quick at batch 2 in few steps; flags given "
                      "explicitly still apply")


PEAK = "peak_matmul"  # the peak-FLOP/s program's name among a group's programs
QUICK = {"pairs": ["mlp"]}  # --quick also takes each pair's quick form, batch sizes and timing
TIMING = {"warmup": 3, "steps": 10, "repeats": 7}        # the flags' defaults
QUICK_TIMING = {"warmup": 2, "steps": 10, "repeats": 5}  # --quick's, unless the pair has its own


# ----------------------------------------------------------------------------- programs


@dataclasses.dataclass
class Program:
    """A compiled step and how to run it again and again.

    `step(carry) -> (carry, out)`: one call; `carry` threads through calls (the donated train
    state), `out` is waited on at the end of a timed chunk.
    """

    compiled: jax.stages.Compiled
    compile_s: float
    step: Callable[[Any], tuple[Any, Any]]
    carry: Any = None
    devices: int = 1                # devices the program runs on (cost analysis is per device)
    counted_flops: float = 0.0      # matmul + conv FLOPs of the whole program (all devices)
    steps: int = 0                  # calls per timed chunk; 0 = the run's --steps
    first_out: Any = None           # a train step's metrics from its first call


def _compile(jitted, *args) -> tuple[jax.stages.Compiled, float, float]:
    """(compiled, seconds to lower and compile, the program's matmul + conv FLOPs)."""
    start = time.perf_counter()
    traced = jitted.trace(*args)
    compiled = traced.lower().compile()
    seconds = time.perf_counter() - start
    return compiled, seconds, jaxpr_dot_conv_flops(traced.jaxpr)


class PairBench:
    """The runs of one pair at one batch size and dtype; setups and teacher shared by modes."""

    def __init__(self, pair: pairs_lib.Pair, batch_size: int, dtype: str, seed: int,
                 teacher_cache: dict, store_top_k: int = 0, loss_impl: str | None = None,
                 population_sizes: tuple[int, ...] = POPULATION_SIZES):
        if loss_impl not in pair.loss_impls:
            raise ValueError(f"pair '{pair.name}': loss_impl {loss_impl!r} is not one of "
                             f"{pair.loss_impls}")
        self.pair, self.batch_size, self.dtype, self.seed = pair, batch_size, dtype, seed
        self.loss_impl, self.population_sizes = loss_impl, tuple(population_sizes)
        if not 0 <= store_top_k <= pair.num_classes:
            raise ValueError(f"--store_top_k={store_top_k}: must be in [0, {pair.num_classes}] "
                             f"for pair '{pair.name}' (0 = all classes)")
        self.store = (TokenStoreLayout(store_top_k or pair.num_classes, pair.num_classes,
                                       pair.seq_len) if pair.tokens
                      else StoreLayout(store_top_k or pair.num_classes, pair.num_classes))
        self._setups: dict[str, RunSetup] = {}
        self._teacher_cache = teacher_cache
        self._batch = None

    def setup(self, config_mode: str) -> RunSetup:
        """`prepare_run` of the pair's config for `config_mode`, on a synthetic dataset."""
        if config_mode not in self._setups:
            config = pairs_lib.run_config(self.pair, config_mode, batch_size=self.batch_size,
                                          dtype=self.dtype, loss_impl=self.loss_impl)
            self._setups[config_mode] = prepare_run(
                config, teacher_checkpoint_required=False, info=pairs_lib.dataset_info(self.pair),
                store=self.store if config_mode == "kd_offline" else None)
        return self._setups[config_mode]

    def teacher(self, setup: RunSetup):
        """Random teacher variables, initialised by the model factory into their shardings."""
        key = (self.pair.name, self.pair.num_classes, self.pair.seq_len, self.dtype,
               tuple(setup.mesh.devices.flat))  # the same for both loss forms
        if key not in self._teacher_cache:
            cfg = setup.config
            t_dtype = DTYPES[cfg.teacher.dtype]
            make = model_factory(cfg.teacher, "config.teacher", setup.info.num_classes,
                                 setup.task.model_io(setup.info)[1], t_dtype, setup.task)

            def init(rng):
                _, params, stats = nnx.split(make(nnx.Rngs(params=rng)), nnx.Param,
                                             nnx.BatchStat)
                return jax.tree.map(lambda x: x.astype(t_dtype),
                                    {"params": params, "batch_stats": stats})
            shardings = jax.tree.map(lambda x: x.sharding, setup.teacher_abstract)
            self._teacher_cache.clear()  # keep one teacher in memory at a time
            self._teacher_cache[key] = jax.jit(init, out_shardings=shardings)(
                jax.random.PRNGKey(self.seed + 1))
        return self._teacher_cache[key]

    def batch(self, setup: RunSetup) -> dict:
        """A synthetic batch in the run's batch sharding: images in [0, 1], labels and indices;
        or random token windows (one document each, every position weighted), the targets the
        inputs shifted by one."""
        if self._batch is None:
            rng = np.random.default_rng(self.seed)
            b, info = self.batch_size, setup.info
            if info.kind == "tokens":
                length = info.seq_len
                tokens = rng.integers(0, info.num_classes, (b, length + 1)).astype(np.int32)
                host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                        "segment_ids": np.ones((b, length), np.int32),
                        "positions": np.broadcast_to(np.arange(length, dtype=np.int32),
                                                     (b, length)).copy(),
                        "weights": np.ones((b, length), np.float32)}
            else:
                host = {"image": rng.random((b, *info.image_shape), dtype=np.float32),
                        "label": rng.integers(0, info.num_classes, b).astype(np.int32)}
            host["index"] = np.arange(b, dtype=np.int32)
            self._batch = jax.device_put(host, setup.batch_sharding)
        return self._batch


def _train_program(bench: PairBench, config_mode: str, batch: dict | None = None) -> Program:
    """The real jaxdistill train step of `config_mode`, state donated from call to call."""
    setup = bench.setup(config_mode)
    teacher = bench.teacher(setup) if setup.teacher_input_abstract is not None else None
    batch = bench.batch(setup) if batch is None else batch
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(
        jax.random.PRNGKey(bench.seed))
    train_fn, _ = compile_steps(setup)
    compiled, seconds, flops = _compile(train_fn, state, teacher, batch)
    return Program(compiled, seconds, lambda s: compiled(s, teacher, batch), state,
                   setup.mesh.devices.size, flops)


def student(bench: PairBench) -> Program:
    return _train_program(bench, "student")


def teacher_forward_fn(setup: RunSetup) -> tuple[Callable, Any]:
    """(fn(teacher, x), its out_shardings): the teacher's eval-mode forward as the KD step
    runs it. `x` is the batch images, or an LM batch's token fields: then fn returns the
    [B, L, V] logits, or in a chunked step the final hidden states go through the teacher's
    head chunk by chunk (`jaxdistill.losses.chunked.weighted_sums`), each chunk's logits
    reduced to their weighted log-sum-exps (so the head is not optimised away): [1]."""
    ctx, task = setup.ctx, setup.task
    if setup.info.kind != "tokens":
        return (lambda t, x: teacher_outputs(ctx, t, x)[0]), setup.batch_sharding

    def fn(t, b):
        inputs = task.inputs(b, None, train=False)
        chunked = ctx.chunk_size > 0
        logits, features = teacher_outputs(ctx, t, inputs.x,
                                           **ctx.call_kwargs(inputs, chunked=chunked))
        if not chunked:
            return logits
        head = output_head(ctx.teacher_def, t["params"], t["batch_stats"])
        chunks = LogitChunks(features[HIDDEN], head, None, None, None, task.targets(b),
                             task.weights(b), ctx.chunk_size)
        return weighted_sums([lambda v: jax.nn.logsumexp(v.student_logits, axis=-1)], chunks)
    return fn, (parallel.replicated(setup.mesh) if ctx.chunk_size else setup.batch_sharding)


def teacher_inputs(setup: RunSetup, batch: dict):
    """What `teacher_forward_fn`'s fn takes besides the teacher: the images, or the token
    fields of an LM batch."""
    if setup.info.kind != "tokens":
        return batch["image"]
    return {k: v for k, v in batch.items() if k != "index"}


def teacher_forward(bench: PairBench) -> Program:
    """The teacher's eval-mode forward on the batch, as the KD step runs it (see
    `teacher_forward_fn`)."""
    setup = bench.setup("kd_online")
    teacher, x = bench.teacher(setup), teacher_inputs(setup, bench.batch(setup))
    t_sh = jax.tree.map(lambda x: x.sharding, setup.teacher_abstract)
    body, out_sh = teacher_forward_fn(setup)
    fn = jax.jit(body, in_shardings=(t_sh, setup.batch_sharding), out_shardings=out_sh)
    compiled, seconds, flops = _compile(fn, teacher, x)
    return Program(compiled, seconds, lambda c: (c, compiled(teacher, x)),
                   devices=setup.mesh.devices.size, counted_flops=flops)


def kd_online(bench: PairBench) -> Program:
    return _train_program(bench, "kd_online")


def feature(bench: PairBench) -> Program:
    return _train_program(bench, "feature")


def kd_offline(bench: PairBench) -> Program:
    """The KD step fed by a store: the batch carries what `jaxdistill.teacher_store` keeps of
    the (random) teacher's logits on its images, top-k entries and log-sum-exps."""
    online = bench.setup("kd_online")
    teacher, batch = bench.teacher(online), bench.batch(online)
    def store_fields(t, b):
        if online.info.kind == "tokens":  # a token store: top-k per position (full logits once)
            inputs = online.task.inputs(b, None, train=False)
            logits = teacher_outputs(online.ctx, t, inputs.x, **inputs.kwargs)[0]
            return bench.store.fields_from_entries(*top_k_per_position(logits, bench.store.top_k))
        logits = teacher_outputs(online.ctx, t, b["image"])[0]
        return StoreLayout.batch_fields(topk_entries(logits, bench.store.top_k))
    fields = jax.jit(store_fields, out_shardings=online.batch_sharding)(teacher, batch)
    return _train_program(bench, "kd_offline", {**bench.batch(online), **fields})


def population_program(bench: PairBench, size: int) -> Program:
    """`size` students of the pair's kd_online config (temperatures 1, 2, ...: traced per
    member) in one `jaxdistill.population` step, states donated from call to call."""
    from jaxdistill import population
    config = pairs_lib.run_config(bench.pair, "kd_online", batch_size=bench.batch_size,
                                  dtype=bench.dtype, loss_impl=bench.loss_impl)
    config.population.size = size
    config.population.members = tuple({"objective.kd.temperature": float(i + 1)}
                                      for i in range(size))
    pop = population.prepare_population(config, teacher_checkpoint_required=False,
                                        info=pairs_lib.dataset_info(bench.pair))
    setup = pop.setup
    teacher, batch = bench.teacher(setup), bench.batch(setup)
    states = jax.jit(pop.init_states, out_shardings=pop.state_shardings)()
    hparams = jax.device_put(pop.hparams, pop.hparams_sharding)
    train_fn, _ = population.compile_steps(pop)
    compiled, seconds, flops = _compile(train_fn, states, hparams, teacher, batch)
    return Program(compiled, seconds, lambda s: compiled(s, hparams, teacher, batch), states,
                   setup.mesh.devices.size, flops)


def population_fields(rec: dict, size: int, student: dict | None,
                      teacher_forward: dict | None) -> dict:
    """A population record's own fields: its size, the step time per member and the goal
    (1.1 x student step + teacher forward / N, from the same group's records)."""
    step = rec["step_time_s"]
    out = {"mode": "population", "population_size": size,
           "member_step_time_s": step / size if step is not None else None,
           "member_examples_per_second": (rec["examples_per_second"] * size
                                          if step is not None else None)}
    if step is not None and student and teacher_forward:
        goal = 1.1 * student["step_time_s"] + teacher_forward["step_time_s"] / size
        out.update(member_goal_s=goal, member_cost_over_goal=step / size / goal)
    return out


# name -> builder(PairBench) -> Program (the population mode: one program per size)
BUILDERS: dict[str, Callable[[PairBench], Program]] = {
    "student": student, "teacher_forward": teacher_forward, "kd_online": kd_online,
    "feature": feature, "kd_offline": kd_offline,
}


# ----------------------------------------------------------------------------- measuring


def time_program(program: Program, *, warmup: int, steps: int, repeats: int) -> np.ndarray:
    """Seconds per step of each of `repeats` chunks of `steps` calls (after `warmup` calls)."""
    carry, out = program.carry, None

    def call(carry):
        carry, out = program.step(carry)
        if program.first_out is None and isinstance(out, dict):  # a train step's metrics
            program.first_out = out
        return carry, out
    for _ in range(warmup):
        carry, out = call(carry)
    jax.block_until_ready((carry, out))
    times = []
    for _ in range(repeats):
        outs = []
        start = time.perf_counter()
        for _ in range(steps):
            carry, out = call(carry)
            outs.append(out)
        jax.block_until_ready((carry, outs))
        times.append((time.perf_counter() - start) / steps)
    program.carry = carry
    return np.asarray(times)


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # not on every backend
        m = None
    if m is None:
        return {"memory_peak_bytes": None}
    fields = ("argument", "output", "alias", "temp", "generated_code")
    out = {f"memory_{f}_bytes": int(getattr(m, f"{f}_size_in_bytes", 0)) for f in fields}
    # what the program holds while it runs: its arguments, its outputs (less those that alias
    # a donated argument) and its temporaries, which XLA allocates as one block
    io = out["memory_argument_bytes"] + out["memory_output_bytes"] - out["memory_alias_bytes"]
    reported = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    out["memory_peak_reported_bytes"] = reported
    # GPU's peak counts the temporaries (it is within 0.3% of the sum on the H200); jax 0.10's
    # CPU backend reports the arguments and outputs alone: then the sum stands in
    temp = out["memory_temp_bytes"]
    out["memory_peak_bytes"] = reported if reported - io >= temp / 2 else io + temp
    return out


def device_peak_bytes() -> int | None:
    """The largest `peak_bytes_in_use` over local devices (process-wide so far), or None."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except (NotImplementedError, RuntimeError):
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def peak_program(mesh, dtype: str, size: int) -> Program:
    """A jitted [d*N, N] @ [N, N] matmul in `dtype`, rows split over the data axis (d), with
    about 0.2 s of calls per timed chunk; `counted_flops` holds its 2*d*N^3 FLOPs."""
    d = mesh.shape[parallel.DATA_AXIS]
    jdtype = DTYPES[dtype]
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((d * size, size), np.float32).astype(jdtype),
                       NamedSharding(mesh, P(parallel.DATA_AXIS)))
    b = jax.device_put(rng.standard_normal((size, size), np.float32).astype(jdtype),
                       parallel.replicated(mesh))
    fn = jax.jit(lambda a, b: a @ b, out_shardings=NamedSharding(mesh, P(parallel.DATA_AXIS)))
    compiled, seconds, _ = _compile(fn, a, b)
    program = Program(compiled, seconds, lambda c: (c, compiled(a, b)), devices=d,
                      counted_flops=2.0 * d * size**3)
    one = float(np.median(time_program(program, warmup=1, steps=1, repeats=3)))
    program.steps = int(np.clip(0.2 / max(one, 1e-9), 1, 100))
    return program


def peak_summary(program: Program, times: np.ndarray, *, dtype: str, size: int) -> dict:
    """The peak fields of a record from the matmul's chunk times (median and best chunk)."""
    flops = program.counted_flops
    return {"peak_flops_per_second": flops / float(np.median(times)),
            "peak_flops_per_second_best": flops / float(np.min(times)),
            "peak_matmul_size": size, "peak_matmul_rows": program.devices * size,
            "peak_dtype": dtype}


def time_interleaved(programs: dict[str, Program], *, warmup: int, steps: int,
                     repeats: int) -> dict[str, np.ndarray]:
    """Per-step seconds of `repeats` chunks of each program, the programs taking turns chunk
    by chunk (in a rotating order), so that a change in machine load hits them all alike and
    their ratios stay meaningful on a shared machine."""
    names = list(programs)
    for name in names:
        time_program(programs[name], warmup=warmup, steps=0, repeats=0)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            p = programs[name]
            times[name].append(time_program(p, warmup=0, steps=p.steps or steps, repeats=1)[0])
    return {name: np.asarray(t) for name, t in times.items()}


def record(bench: PairBench, mode: str, program: Program, times: np.ndarray | None, *,
           steps: int, peak: dict | None) -> dict:
    """One record: timing, FLOPs, memory of `program`, timed as `times` (s/step per chunk;
    None with `--memory_only`: then the timing fields are None)."""
    devices = program.devices
    timed = times is not None
    median = float(np.median(times)) if timed else None
    rec = {
        "pair": bench.pair.name, "mode": mode, "batch_size": bench.batch_size,
        "dtype": bench.dtype, "teacher": bench.pair.teacher, "student": bench.pair.student,
        "devices": devices, "device_kind": jax.devices()[0].device_kind,
        "examples_per_second": bench.batch_size / median if timed else None,
        "step_time_s": median,
        "step_time_p10_s": float(np.percentile(times, 10)) if timed else None,
        "step_time_p90_s": float(np.percentile(times, 90)) if timed else None,
        "step_time_min_s": float(np.min(times)) if timed else None,
        "timed_steps": steps * len(times) if timed else 0, "compile_s": program.compile_s,
        "flops_per_step_compiled_per_device": xla_flops(program.compiled),
        **flops_fields(xla_flops(program.compiled) * devices, program.counted_flops, median,
                       peak["peak_flops_per_second"] if peak else None),
        **(peak or {"peak_flops_per_second": None}),
        **_memory(program.compiled),
        "device_peak_bytes_in_use": device_peak_bytes(),
    }
    if bench.pair.tokens:
        tokens = bench.batch_size * bench.pair.seq_len
        rec.update(unit="tokens", loss_impl=bench.loss_impl, vocab_size=bench.pair.num_classes,
                   seq_len=bench.pair.seq_len,
                   chunk_size=bench.pair.chunk_size if bench.loss_impl == "chunked" else 0,
                   tokens_per_step=tokens, tokens_per_second=tokens / median if timed else None,
                   flops_per_token=rec["flops_per_step"] / tokens)
    if program.first_out is not None:
        metrics = {k: np.asarray(v).tolist()  # a population's: one value per member
                   for k, v in jax.device_get(program.first_out).items()}
        rec.update(first_step_loss=metrics["loss"], first_step_metrics=metrics)
    return rec


def flops_fields(xla: float, counted: float, step_time_s: float | None,
                 peak_flops_per_second: float | None) -> dict:
    """A record's FLOP fields from XLA's count of the whole step and its matmul + conv count
    (`jaxdistill.flops.choose_flops`), its median step time and the group's peak (None, not
    timed: no achieved rate)."""
    flops, source = choose_flops(xla, counted)
    achieved = flops / step_time_s if step_time_s else None
    return {"flops_per_step": flops, "flops_source": source, "flops_per_step_dot_conv": counted,
            "achieved_flops_per_second": achieved,
            "fraction_of_peak": (achieved / peak_flops_per_second
                                 if achieved is not None and peak_flops_per_second else None)}


def kd_ideal_ratio(mode: str, student: dict, teacher_forward: dict | None) -> float:
    """1 + teacher forward FLOPs / student step FLOPs (records of one group); kd_offline's
    teacher ran when its store was written: 1."""
    teacher = teacher_forward["flops_per_step"] if mode == "kd_online" else 0.0
    return 1.0 + teacher / student["flops_per_step"]


def batch_plan(pairs: list[pairs_lib.Pair], entries, defaults: dict[str, tuple[int, ...]],
               aliases: dict[str, str] | None = None) -> dict[str, list[int]]:
    """{pair name: batch sizes} from `entries` (ints or strings 'N' for every pair, 'PAIR:N'
    for that pair only, in place of the plain ones; PAIR may be a name `aliases` maps to a
    measured pair's, e.g. lm for lm_quick; entries of known pairs not measured are ignored);
    a pair without entries gets `defaults`."""
    aliases = aliases or {}
    plain, own = [], {}
    for entry in entries:
        name, _, size = str(entry).rpartition(":")
        try:
            size = int(size)
        except ValueError:
            raise ValueError(f"--batch_sizes: '{entry}' is not N or PAIR:N") from None
        if size <= 0:
            raise ValueError(f"--batch_sizes must be positive, got {list(entries)}")
        if name and name not in pairs_lib.PAIRS:
            raise ValueError(f"--batch_sizes: '{entry}' names an unknown pair '{name}'; "
                             f"choose from {list(pairs_lib.PAIRS)}")
        (own.setdefault(aliases.get(name, name), []) if name else plain).append(size)
    plan = {}
    for pair in pairs:
        sizes = own.get(pair.name) or plain or list(defaults[pair.name])
        plan[pair.name] = list(dict.fromkeys(sizes))
    return plan


def resolve_pairs(pair_names, *, quick: bool = False, vocab_size: int = 0, seq_len: int = 0,
                  chunk_size: int = 0) -> tuple[list[pairs_lib.Pair], dict, dict]:
    """(the pairs measured, {pair name: default batch sizes}, {name asked for: name
    measured}): `pair_names` checked, each replaced by its quick form with `quick`, LM pairs
    reshaped by the overrides."""
    for name in pair_names:
        if name not in pairs_lib.PAIRS:
            raise ValueError(f"--pairs: unknown pair '{name}'; choose from {list(pairs_lib.PAIRS)}")
    pairs, defaults, aliases = [], {}, {}
    for name in dict.fromkeys(pair_names):
        pair, sizes = (pairs_lib.quick_pair(name) if quick
                       else (pairs_lib.PAIRS[name], pairs_lib.PAIRS[name].batch_sizes))
        pair = pairs_lib.with_shape(pair, vocab_size=vocab_size, seq_len=seq_len,
                                    chunk_size=chunk_size)
        aliases[name] = pair.name
        if pair.name not in defaults:
            pairs.append(pair)
            defaults[pair.name] = sizes
    if (vocab_size or seq_len or chunk_size) and not any(p.tokens for p in pairs):
        raise ValueError("--vocab_size / --seq_len / --chunk_size shape LM pairs; none of "
                         f"{[p.name for p in pairs]} is one")
    for flag, value in (("vocab_size", vocab_size), ("seq_len", seq_len),
                        ("chunk_size", chunk_size)):
        if value < 0:
            raise ValueError(f"--{flag} must be >= 0, got {value}")
    return pairs, defaults, aliases


def run(pair_names, modes, batch_sizes=(), *, dtype="float32", warmup=None, steps=None,
        repeats=None, peak_size=0, seed=0, store_top_k=0, loss_impls=pairs_lib.LOSS_IMPLS,
        vocab_size=0, seq_len=0, chunk_size=0, quick=False, memory_only=False, log=print,
        on_progress=None, population_sizes=POPULATION_SIZES) -> tuple[list[dict], list[str]]:
    """Measures every (pair, batch size, loss form, mode); returns (records, footer notes).

    `batch_sizes`: see `batch_plan` (empty: each pair's own). `warmup`, `steps`, `repeats`:
    None takes `TIMING`, or with `quick` the pair's `quick_timing` over `QUICK_TIMING`.
    `loss_impls`: the LM pairs' loss forms. `memory_only`: compile, record memory and FLOPs,
    time nothing. `on_progress(records)` is called with the records so far after each (pair,
    batch size, loss form). `population_sizes`: the population mode's numbers of students.
    """
    pairs, default_sizes, aliases = resolve_pairs(
        pair_names, quick=quick, vocab_size=vocab_size, seq_len=seq_len, chunk_size=chunk_size)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"--modes: unknown mode '{mode}'; choose from {list(MODES)}")
    plan = batch_plan(pairs, batch_sizes or (), default_sizes, aliases)
    impls = list(dict.fromkeys(loss_impls))
    if any(p.tokens for p in pairs) and (not impls or set(impls) - set(pairs_lib.LOSS_IMPLS)):
        raise ValueError(f"--loss_impls: {impls}; choose from {list(pairs_lib.LOSS_IMPLS)}")
    notes = []
    wanted = list(dict.fromkeys(modes))
    # the KD modes' ratios need the student's time, kd_online's ideal the teacher's FLOPs
    needed = (set(wanted) | ({"student"} if set(KD_MODES) & set(wanted) else set())
              | ({"teacher_forward"} if "kd_online" in wanted else set())
              | ({"student", "teacher_forward"} if "population" in wanted else set()))
    if any(int(n) <= 0 for n in population_sizes):
        raise ValueError(f"--population_sizes must be positive, got {list(population_sizes)}")
    if memory_only:  # no ratios
        needed = set(wanted)
    mesh = parallel.make_mesh((-1, 1), ("data", "model"))
    if not peak_size:
        peak_size = 2048 if jax.default_backend() == "cpu" else 8192
    matmul = None if memory_only else peak_program(mesh, dtype, peak_size)
    records, teacher_cache = [], {}
    for pair in pairs:
        name = pair.name
        missing = [m for m in wanted if m not in pair.modes]
        if missing:
            notes.append(f"{name}: {', '.join(missing)} not measured (this pair's modes: "
                         f"{', '.join(pair.modes)})")
        order = [m for m in MODES if m in needed and m in pair.modes]
        given = {"warmup": warmup, "steps": steps, "repeats": repeats}
        timing = {**(QUICK_TIMING if quick else TIMING),
                  **(dict(pair.quick_timing) if quick else {}),
                  **{k: v for k, v in given.items() if v is not None}}
        for batch_size in plan[name]:
            by_impl = {}
            for impl in (impls if pair.tokens else [None]):
                bench = PairBench(pair, batch_size, dtype, seed, teacher_cache, store_top_k,
                                  loss_impl=impl,
                                  population_sizes=tuple(int(n) for n in population_sizes))
                group = name + (f" {impl}" if impl else "")
                by_mode = measure_group(bench, group, order, matmul, peak_size, **timing,
                                        notes=notes, log=log)
                by_impl[impl] = by_mode
                if impl == "naive" and "chunked" in by_impl:
                    memory_ratios(by_impl["chunked"], by_mode)
                records += [r for r in by_mode.values() if r["mode"] in wanted]
                if on_progress is not None:
                    on_progress(records)
    return records, notes


def measure_group(bench: PairBench, group: str, order: list[str], matmul: Program | None,
                  peak_size: int, *, warmup: int, steps: int, repeats: int, notes: list[str],
                  log) -> dict[str, dict]:
    """Compiles the modes `order` of one (pair, batch size, loss form), times them with the
    peak matmul taking turns (`matmul` None: times nothing), and returns {mode: record}."""
    name, batch_size, dtype = bench.pair.name, bench.batch_size, bench.dtype
    programs = {}
    jobs = [(f"population@{n}", lambda n=n: population_program(bench, n))
            if mode == "population" else (mode, lambda mode=mode: BUILDERS[mode](bench))
            for mode in order for n in (bench.population_sizes if mode == "population" else [0])]
    for mode, build in jobs:
        try:
            programs[mode] = build()
        except ValueError as e:  # a config this package cannot run (yet): say why
            impl = f"/{bench.loss_impl}" if bench.loss_impl else ""
            notes.append(f"{name}/{mode}{impl}/{batch_size}: skipped: {e}")
            log(f"skipped {group} {mode} batch {batch_size}: {e}")
            continue
        log(f"{group} {mode} batch {batch_size}: compiled in {programs[mode].compile_s:.2f} s")
    times, peak = {}, None
    if matmul is not None:  # the peak matmul takes its turns with the steps: same load
        times = time_interleaved({**programs, PEAK: matmul}, warmup=warmup, steps=steps,
                                 repeats=repeats)
        peak = peak_summary(matmul, times[PEAK], dtype=dtype, size=peak_size)
        log(peak_line(peak))
    by_mode = {m: record(bench, m, programs[m], times.get(m), steps=steps, peak=peak)
               for m in programs}
    del programs
    for mode, rec in by_mode.items():
        line = f"{group} {mode} batch {batch_size}: "
        if rec["step_time_s"] is not None:
            line += f"{rec['step_time_s'] * 1e3:.2f} ms/step, "
        if rec["memory_peak_bytes"] is not None:
            line += f"XLA peak {rec['memory_peak_bytes'] / 2**20:.1f} MiB"
        log(line.rstrip(", "))
    if "kd_offline" in by_mode:
        by_mode["kd_offline"]["store_top_k"] = bench.store.top_k
    st, tf = by_mode.get("student"), by_mode.get("teacher_forward")
    for key, rec in by_mode.items():  # one record per population size, mode 'population'
        if key.startswith("population@"):
            rec.update(population_fields(rec, int(key.split("@")[1]), st, tf))
    for mode in KD_MODES:
        kd = by_mode.get(mode)
        if not (kd and st and (tf or mode == "kd_offline")) or not times:
            continue
        # chunk by chunk (timed side by side), then the median: robust to load drift
        paired = times[mode] / times["student"]
        kd["kd_time_ratio"] = float(np.median(paired))
        kd["kd_time_ratio_p10"] = float(np.percentile(paired, 10))
        kd["kd_time_ratio_p90"] = float(np.percentile(paired, 90))
        kd["kd_ideal_ratio"] = kd_ideal_ratio(mode, st, tf)
    return by_mode


def memory_ratios(chunked: dict[str, dict], naive: dict[str, dict]) -> None:
    """Gives each chunked record `memory_peak_bytes_naive` and `memory_peak_ratio_vs_naive`
    (its XLA peak over the naive record's of the same mode), where both are known."""
    for mode, rec in chunked.items():
        other = naive.get(mode)
        if other and rec["memory_peak_bytes"] and other["memory_peak_bytes"]:
            rec["memory_peak_bytes_naive"] = other["memory_peak_bytes"]
            rec["memory_peak_ratio_vs_naive"] = (rec["memory_peak_bytes"]
                                                 / other["memory_peak_bytes"])


# ----------------------------------------------------------------------------- output


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _row(values, cols) -> str:
    return "  ".join(f"{v:>{w}}" for v, (_, w) in zip(values, cols))


def format_table(records: list[dict], notes: list[str]) -> str:
    """The table of `records` (LM records in their own table, in tokens/s with both memory
    figures), a line on the peak and the columns, the chunked / naive memory ratios, and
    `notes`."""
    images = [r for r in records if r.get("unit") != "tokens"]
    tokens = [r for r in records if r.get("unit") == "tokens"]
    lines = []
    if images or not tokens:
        cols = [("pair", 7), ("mode", 16), ("batch", 6), ("dtype", 9), ("ms/step", 9),
                ("p10-p90 ms", 15), ("ex/s", 10), ("GFLOP/step", 11), ("GFLOP/s", 9),
                ("%peak", 6), ("compile s", 9), ("peak MiB", 9), ("kd ratio", 8), ("ideal", 6)]
        lines.append(_row([c for c, _ in cols], cols))
        for r in images:
            mem = r["device_peak_bytes_in_use"] or r["memory_peak_bytes"]
            lines.append(_row(
                [r["pair"], _mode_label(r), str(r["batch_size"]), r["dtype"],
                 _fmt(r["step_time_s"], ".2f", 1e3), _spread(r),
                 _fmt(r["examples_per_second"], ".0f"), _fmt(r["flops_per_step"], ".3f", 1e-9),
                 _fmt(r["achieved_flops_per_second"], ".1f", 1e-9),
                 _fmt(r["fraction_of_peak"], ".1f", 100), _fmt(r["compile_s"], ".2f"),
                 _fmt(mem, ".1f", 1 / 2**20), _fmt(r.get("kd_time_ratio"), ".3f"),
                 _fmt(r.get("kd_ideal_ratio"), ".3f")], cols))
    if tokens:
        if images:
            lines.append("")
        cols = [("pair", 8), ("mode", 16), ("loss", 7), ("batch", 5), ("seq", 5),
                ("vocab", 6), ("dtype", 9), ("ms/step", 9), ("p10-p90 ms", 15), ("tok/s", 9),
                ("MFLOP/tok", 9), ("GFLOP/s", 9), ("%peak", 6), ("compile s", 9),
                ("XLA MiB", 9), ("dev MiB", 9), ("kd ratio", 8), ("ideal", 6)]
        lines.append(_row([c for c, _ in cols], cols))
        for r in tokens:
            lines.append(_row(
                [r["pair"], r["mode"], r["loss_impl"], str(r["batch_size"]), str(r["seq_len"]),
                 str(r["vocab_size"]), r["dtype"], _fmt(r["step_time_s"], ".2f", 1e3),
                 _spread(r), _fmt(r["tokens_per_second"], ".0f"),
                 _fmt(r["flops_per_token"], ".1f", 1e-6),
                 _fmt(r["achieved_flops_per_second"], ".1f", 1e-9),
                 _fmt(r["fraction_of_peak"], ".1f", 100), _fmt(r["compile_s"], ".2f"),
                 _fmt(r["memory_peak_bytes"], ".1f", 1 / 2**20),
                 _fmt(r["device_peak_bytes_in_use"], ".1f", 1 / 2**20),
                 _fmt(r.get("kd_time_ratio"), ".3f"), _fmt(r.get("kd_ideal_ratio"), ".3f")],
                cols))
    timed = [r for r in records if r.get("peak_flops_per_second")]
    if timed:
        peaks = sorted({r["peak_flops_per_second"] for r in timed})
        line = peak_line(timed[0])
        if len(peaks) > 1:  # one peak per (pair, batch size, loss form) group
            line = (f"peak: {peaks[0] / 1e9:.1f} to {peaks[-1] / 1e9:.1f} GFLOP/s median over "
                    "the groups, " + line.split(" best, ", 1)[1])
        lines.append(f"{line}; {timed[0]['devices']} x {timed[0]['device_kind']}")
    elif records:
        lines.append(f"not timed (--memory_only); {records[0]['devices']} x "
                     f"{records[0]['device_kind']}")
    lines.append("ms/step: median over chunks; p10-p90: spread over chunks; peak MiB: device "
                 "peak in use (process-wide so far) where the backend reports it, else XLA's "
                 "compiled peak; kd ratio: KD step / student step time; ideal: 1 + teacher "
                 "forward FLOPs / student step FLOPs")
    if tokens:
        lines.append("LM rows: loss chunked (logit terms chunk by chunk through the heads) or "
                     "naive ([B, L, V] logits); tok/s and MFLOP/tok per token of the batch; "
                     "XLA MiB: the program's compiled peak (memory_analysis); dev MiB: device "
                     "peak in use, process-wide so far (none on CPU)")
        for r in tokens:
            if "memory_peak_ratio_vs_naive" in r:
                lines.append(
                    f"memory: {r['pair']} {r['mode']} batch {r['batch_size']} x "
                    f"{r['seq_len']}, V {r['vocab_size']}: chunked (chunk {r['chunk_size']}) "
                    f"{r['memory_peak_bytes'] / 2**20:.1f} MiB / naive "
                    f"{r['memory_peak_bytes_naive'] / 2**20:.1f} MiB = "
                    f"{r['memory_peak_ratio_vs_naive']:.3f}")
    lines += population_lines(records)
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _mode_label(r: dict) -> str:
    return f"population x{r['population_size']}" if r["mode"] == "population" else r["mode"]


def population_lines(records: list[dict]) -> list[str]:
    """Per population record: the step time per member against the goal."""
    return [f"population: {r['pair']} batch {r['batch_size']}, N = {r['population_size']}: "
            f"{r['member_step_time_s'] * 1e3:.2f} ms per member, goal (1.1 x student + teacher "
            f"forward / N) {r['member_goal_s'] * 1e3:.2f} ms: "
            f"{r['member_cost_over_goal']:.2f} x the goal"
            for r in records if r["mode"] == "population" and "member_goal_s" in r]


def _spread(r: dict) -> str:
    if r["step_time_p10_s"] is None:
        return "-"
    return f"{r['step_time_p10_s'] * 1e3:.2f}-{r['step_time_p90_s'] * 1e3:.2f}"


def peak_line(peak: dict) -> str:
    n = peak["peak_matmul_size"]
    return (f"peak: {peak['peak_flops_per_second'] / 1e9:.1f} GFLOP/s median, "
            f"{peak['peak_flops_per_second_best'] / 1e9:.1f} best, {peak['peak_dtype']} matmul "
            f"[{peak['peak_matmul_rows']}x{n}] @ [{n}x{n}] on the same mesh")


def write_json(records: list[dict], out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "throughput.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=2)
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.quick:
        for name, value in QUICK.items():
            if not FLAGS[name].present:
                FLAGS[name].value = value
    if FLAGS.table_from:
        with open(FLAGS.table_from) as f:
            records = json.load(f)
        print(format_table(records, []), flush=True)
        return

    def log(line):
        print(line, file=sys.stderr, flush=True)

    save = (lambda records: write_json(records, FLAGS.out)) if FLAGS.out else None
    timing = {k: FLAGS[k].value if FLAGS[k].present or not FLAGS.quick else None
              for k in TIMING}  # --quick: each pair's quick timing unless given
    records, notes = run(
        FLAGS.pairs, FLAGS.modes, FLAGS.batch_sizes, dtype=FLAGS.dtype, **timing,
        peak_size=FLAGS.peak_size, seed=FLAGS.seed,
        store_top_k=FLAGS.store_top_k, loss_impls=FLAGS.loss_impls,
        vocab_size=FLAGS.vocab_size, seq_len=FLAGS.seq_len, chunk_size=FLAGS.chunk_size,
        quick=FLAGS.quick, memory_only=FLAGS.memory_only, log=log, on_progress=save,
        population_sizes=[int(n) for n in FLAGS.population_sizes])
    if FLAGS.out:
        log(f"wrote {write_json(records, FLAGS.out)}")
    print(format_table(records, notes), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
