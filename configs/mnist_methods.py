"""Every method of the library on mnist5k, offline: `configs/mnist_methods.py:<method>`.

A CNN teacher (32-64 channels) distils into a CNN student (8-16 channels), features
tapped by name: FitNets and SP on `stage2` (7x7 maps), attention transfer summed over
`stage1` and `stage2` (14x14 and 7x7), RKD, PKT and CRD on `embedding`. With no teacher checkpoint the teacher is trained into
<workdir>/teacher first; `--config.baseline=True` adds the student from scratch.
`<method>,tiny` is the few-step digits version the tests run.

  python -m jaxdistill.main --config=configs/mnist_methods.py:crd --workdir=/tmp/mnist_crd
  python -m jaxdistill.main --config=configs/mnist_methods.py:at --workdir=/tmp/mnist_at \
      --config.teacher.checkpoint=/tmp/mnist_crd/teacher

Methods: kd lskd dkd lsdkd fitnet at sp rkd pkt crd adversarial fkl rkl jsd tvd.
"""

from jaxdistill.defaults import base_config
from jaxdistill.recipes import method_objective, set_objective


def get_config(arg=None):
    method, _, size = (arg or "kd").partition(",")
    c = base_config()
    c.data.name = "mnist5k"
    c.data.augment_pixels = 2
    c.data.mean = (0.1307,)
    c.data.std = (0.3081,)
    c.student.model = "cnn"
    c.student.kwargs.widths = (8, 16)
    c.student.kwargs.hidden = 32
    c.teacher.model = "cnn"
    c.teacher.train.num_steps = 1500
    c.teacher.train.learning_rate = 0.05
    c.teacher.train.augment = "jitter"
    c.num_steps = 1000
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.optimizer.grad_clip = 5.0  # the 8-16 channel student dies (all-ReLU-off) without it
    c.log_every = 200
    c.eval_every = c.checkpoint_every = 500
    terms = method_objective(method, hint_feature="stage2", map_feature="stage2",
                             at_features=("stage1", "stage2"))
    if "crd" in terms:
        terms["crd"]["num_negatives"] = 1024
    if size == "tiny":
        c.data.name = "digits"
        c.batch_size = 32
        c.eval_batch_size = 120
        c.teacher.kwargs.widths = (8, 16)
        c.teacher.kwargs.hidden = 32
        c.teacher.train.num_steps = 10
        c.num_steps = 16
        c.log_every = 1
        c.eval_every = c.checkpoint_every = 8
        if "crd" in terms:
            terms["crd"]["num_negatives"] = 64
    elif size:
        raise ValueError(f"configs/mnist_methods.py: unknown size '{size}' (try '{method},tiny')")
    if "dkd" in terms:  # DKD ramps its loss up, as its paper does (20 of 240 epochs)
        terms["dkd"]["warmup_steps"] = c.num_steps // 10
    set_objective(c, terms)
    return c
