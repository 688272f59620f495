"""A population against its members' separate runs: `configs/mnist_population.py` (8
temperatures) trained as one population and as 8 separate runs of
`population_config.member_configs(config)[i]`; held-out top-1 and agreement of each, and the
wall time of both. Prints a Markdown table and writes population_match.json.

  python -m benchmarks.population_match --teacher=/tmp/mnist_kd/teacher --out=/tmp/pop_match
  python -m benchmarks.population_match --teacher=T --out=DIR --arg=runlocal   # 400 steps
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

from absl import app, flags

from jaxdistill import population, population_config
from jaxdistill.train import train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", None, "workdir of a finished mnist_kd teacher run")
flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_string("arg", "", "argument of configs/mnist_population.py ('' or 'runlocal')")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def population_config_file(arg: str):
    """configs/mnist_population.py's config for `arg`, with no scratch baseline."""
    spec = importlib.util.spec_from_file_location(
        "mnist_population", os.path.join(ROOT, "configs", "mnist_population.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.baseline = False
    return config


def main(argv):
    del argv
    config = population_config_file(FLAGS.arg)
    config.teacher.checkpoint = FLAGS.teacher
    start = time.perf_counter()
    pop = population.train_population(config, os.path.join(FLAGS.out, "population"))
    population_s = time.perf_counter() - start
    rows, start = [], time.perf_counter()
    for i, member_cfg in enumerate(population_config.member_configs(config)):
        alone = train_and_evaluate(member_cfg, os.path.join(FLAGS.out, f"separate{i}"))
        member = pop["members"][i]
        rows.append({"member": i, "settings": member["settings"],
                     **{f"{k}_{side}": s[k] for k in ("student_accuracy", "agreement")
                        for side, s in (("population", member), ("separate", alone))}})
    separate_s = time.perf_counter() - start
    header = ("| member | settings | top-1 population | top-1 separate | agreement population "
              "| agreement separate |")
    lines = [header, "|---|---|---|---|---|---|"]
    lines += [f"| {r['member']} | {json.dumps(r['settings'])} | {r['student_accuracy_population']:.4f}"
              f" | {r['student_accuracy_separate']:.4f} | {r['agreement_population']:.4f} | "
              f"{r['agreement_separate']:.4f} |" for r in rows]
    lines.append(f"\npopulation {population_s:.0f} s, {len(rows)} separate runs {separate_s:.0f} s")
    print("\n".join(lines))
    with open(os.path.join(FLAGS.out, "population_match.json"), "w") as f:
        json.dump({"rows": rows, "population_s": population_s, "separate_s": separate_s}, f,
                  indent=1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["teacher", "out"])
    app.run(main)
