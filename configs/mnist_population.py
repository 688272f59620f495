"""A population of 8 mnist5k students distilled at 8 temperatures in one run: the Hinton
recipe of configs/mnist_kd.py (teacher 784-1200-1200-10 -> student 784-800-800-10), one
teacher pass per batch shared by all 8 (jaxdistill.population). Each member's
`members/<i>/summary.json` equals a separate run of `population_config.member_configs(config)[i]`.

  python -m jaxdistill.main --config=configs/mnist_population.py --workdir=/tmp/mnist_population
  python -m jaxdistill.main --config=configs/mnist_population.py:runlocal --workdir=/tmp/mnist_pop_local

`tiny` (4 members, tiny MLPs, a few steps) is what tests/test_population.py runs.
"""

import importlib.util
import os

TEMPERATURES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0)


def kd_config(arg=None):
    """configs/mnist_kd.py's config (read from beside this file)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_kd.py")
    spec = importlib.util.spec_from_file_location("mnist_kd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    c = kd_config("runlocal" if arg in ("runlocal", "tiny") else None)
    c.baseline = False
    temperatures = TEMPERATURES
    if arg == "tiny":
        temperatures = (1.0, 2.0, 4.0, 8.0)
        c.student.model = c.teacher.model = "mlp"
        c.student.kwargs.widths = (16,)
        c.teacher.kwargs.widths = (32,)
        c.teacher.train.num_steps = 4
        c.batch_size = 64
        c.eval_batch_size = 200
        c.num_steps = 4
        c.optimizer.warmup_steps = 0
        c.log_every = 1
        c.eval_every = c.checkpoint_every = 2
    elif arg not in (None, "runlocal"):
        raise ValueError(f"configs/mnist_population.py: unknown argument '{arg}' (try 'runlocal' "
                         "or 'tiny')")
    c.population.size = len(temperatures)
    c.population.members = tuple({"objective.kd.temperature": t} for t in temperatures)
    return c
