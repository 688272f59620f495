r"""Recounts the FLOP fields of `benchmarks/throughput.py` records, without a GPU.

XLA's GPU cost analysis leaves cuBLAS / cuDNN calls largely uncounted; throughput.py falls back
to the step's matmul + convolution count (`jaxdistill.flops`), but records written before that
fallback existed carry the short count. The count comes from the program's jaxpr, which does not
depend on the backend, so it can be taken here for the same (pair, mode, batch size, dtype,
store top-k; for LM records also loss form, vocabulary, length and chunk size) programs, traced
abstractly (nothing compiled or allocated). Each record gets `flops_per_step_dot_conv` and, from
it and the record's own XLA count (per device x devices), times and peak, new `flops_per_step`,
`flops_source`, `achieved_flops_per_second`, `fraction_of_peak`, `kd_ideal_ratio` (and for LM
records `flops_per_token`); the measured times are kept. The inputs' records are
written, in order, to one file (each with `source_file`).

Usage (from the repository root):
  python -m benchmarks.recount_flops --out=merged.json run1/throughput.json run2/throughput.json
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from jaxdistill.flops import dot_conv_flops
from jaxdistill.train import compile_steps

if __package__:
    from benchmarks import pairs as pairs_lib
    from benchmarks import throughput
else:
    import pairs as pairs_lib
    import throughput

FLAGS = flags.FLAGS


def counted_flops(pair: str, mode: str, batch_size: int, dtype: str, store_top_k: int = 0,
                  loss_impl: str | None = None, vocab_size: int = 0, seq_len: int = 0,
                  chunk_size: int = 0) -> float:
    """The matmul + conv FLOPs per step of the throughput benchmark's program for `mode`
    (an LM pair's at `loss_impl`, reshaped as `pairs.with_shape` does)."""
    shaped = pairs_lib.with_shape(pairs_lib.PAIRS[pair], vocab_size=vocab_size,
                                  seq_len=seq_len, chunk_size=chunk_size)
    bench = throughput.PairBench(shaped, batch_size, dtype, 0, {}, store_top_k,
                                 loss_impl=loss_impl)
    if mode == "teacher_forward":
        setup = bench.setup("kd_online")
        fn, _ = throughput.teacher_forward_fn(setup)
        return dot_conv_flops(fn, setup.teacher_abstract,
                              throughput.teacher_inputs(setup, setup.abstract_batch(batch_size)))
    setup = bench.setup(mode)
    train_fn, _ = compile_steps(setup)
    return dot_conv_flops(train_fn, setup.abstract_state, setup.teacher_input_abstract,
                          setup.abstract_batch(batch_size))


def recount(records: list[dict]) -> list[dict]:
    """`records` with their FLOP fields recounted (see the module doc)."""
    counts, out = {}, []
    for r in records:
        key = (r["pair"], r["mode"], r["batch_size"], r["dtype"], r.get("store_top_k", 0),
               r.get("loss_impl"), r.get("vocab_size", 0), r.get("seq_len", 0),
               r.get("chunk_size", 0))
        if key not in counts:
            counts[key] = counted_flops(*key)
        xla = r["flops_per_step_compiled_per_device"] * r["devices"]
        new = {**r, **throughput.flops_fields(xla, counts[key], r["step_time_s"],
                                              r["peak_flops_per_second"])}
        if "tokens_per_step" in r:
            new["flops_per_token"] = new["flops_per_step"] / r["tokens_per_step"]
        out.append(new)
    groups = {}
    for r in out:
        groups.setdefault((r.get("source_file"), r["pair"], r["batch_size"], r["dtype"],
                           r.get("loss_impl")), {})[r["mode"]] = r
    for by_mode in groups.values():
        for mode in throughput.KD_MODES:
            if mode in by_mode and "kd_ideal_ratio" in by_mode[mode]:
                by_mode[mode]["kd_ideal_ratio"] = throughput.kd_ideal_ratio(
                    mode, by_mode["student"], by_mode.get("teacher_forward"))
    return out


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more throughput.json files to recount")
    records = []
    for path in argv[1:]:
        with open(path) as f:
            records += [{**r, "source_file": os.path.basename(path)} for r in json.load(f)]
    records = recount(records)
    with open(FLAGS.out, "w") as f:
        json.dump(records, f, indent=2)
    print(throughput.format_table(records, []), flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "where to write the recounted records (JSON)")
    flags.mark_flag_as_required("out")
    app.run(main)
