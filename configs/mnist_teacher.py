"""The MNIST teacher of Hinton et al. (2015) on mnist5k: 784-1200-1200-10 with dropout and
+-2 pixel jitter, plain supervised training (no teacher). Its workdir is what
`config.teacher.checkpoint` of configs/mnist_kd.py can point at.

  python -m jaxdistill.main --config=configs/mnist_teacher.py --workdir=/tmp/mnist_teacher
"""

from jaxdistill.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.data.name = "mnist5k"
    c.data.augment = "jitter"
    c.data.augment_pixels = 2
    c.data.mean = (0.1307,)
    c.data.std = (0.3081,)
    c.student.model = "mlp_teacher"
    c.num_steps = 3000
    c.optimizer.learning_rate = 0.05
    c.log_every = 250
    c.eval_every = c.checkpoint_every = 1000
    if arg:
        raise ValueError(f"configs/mnist_teacher.py: unknown argument '{arg}'")
    return c
