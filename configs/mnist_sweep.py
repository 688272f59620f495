"""A recipe search for configs/mnist_kd.py: KD temperature and weight, sampled by TPE, for
two student widths, by successive halving; each rung's trials of one width train as one
population (one teacher pass per batch).

  python -m jaxdistill.sweep --config=configs/mnist_kd.py --space=configs/mnist_sweep.py \
      --workdir=/tmp/mnist_sweep

It writes trials.json / trials.md, best_config.py (run it with jaxdistill.main) and sweep.png
into the workdir; rerun the same command to resume a killed sweep.
"""


def get_space():
    return {
        "fields": {
            "objective.kd.temperature": {"low": 1.0, "high": 20.0, "log": True},
            "objective.kd.weight": {"low": 0.1, "high": 0.95},
            "student.kwargs.widths": {"choices": [(200, 200), (800, 800)]},
        },
        "sampler": "tpe",
        "trials": 9,          # per width and bracket
        "brackets": 2,        # the second bracket's TPE samples from the first's results
        "rungs": (300, 900),  # steps; the best third of rung 0 trains again for 900
        "eta": 3,
        "seed": 0,
    }
