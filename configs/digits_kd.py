"""KD on scikit-learn's digits (1,797 8x8 images): small CNN teacher -> MLP student.

  python -m jaxdistill.main --config=configs/digits_kd.py --workdir=/tmp/digits_kd
  python -m jaxdistill.main --config=configs/digits_kd.py:tiny --workdir=/tmp/digits_tiny

`tiny` is the few-second run the tests drive through the CLI.
"""

from jaxdistill.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.data.name = "digits"
    c.data.augment_pixels = 1
    c.batch_size = 64
    c.eval_batch_size = 120
    c.baseline = True

    c.student.model = "mlp"
    c.student.kwargs.widths = (64,)
    c.teacher.model = "cnn"
    c.teacher.train.num_steps = 800
    c.teacher.train.learning_rate = 0.05
    c.teacher.train.augment = "jitter"

    c.objective.ce.weight = 0.5
    c.objective.kd = dict(weight=0.5, temperature=4.0)

    c.num_steps = 600
    c.optimizer.learning_rate = 0.05
    c.log_every = 100
    c.eval_every = c.checkpoint_every = 300

    if arg == "tiny":
        c.student.kwargs.widths = (32,)
        c.teacher.model = "mlp"
        c.teacher.kwargs.widths = (64,)
        c.teacher.train.num_steps = 20
        c.num_steps = 12
        c.log_every = 4
        c.eval_every = c.checkpoint_every = 6
    elif arg:
        raise ValueError(f"configs/digits_kd.py: unknown argument '{arg}' (try 'tiny')")
    return c
