"""CIFAR-100 resnet32x4 -> resnet8x4 KD, the recipe of the CRD/DKD papers' code: SGD
momentum 0.9, lr 0.05, weight decay 5e-4, batch 64, 240 epochs with x0.1 at 150/180/210,
random crop (pad 4) and horizontal flip; loss 0.1 CE + 0.9 KD at T = 4.

Needs TFDS `cifar100` prepared in data_dir (no download happens here) and an
accelerator. The teacher checkpoint is a run of configs/cifar100_teacher.py.

  python -m jaxdistill.main --config=configs/cifar100_kd.py --workdir=$WORK/c100_kd \
      --config.data.data_dir=$TFDS_DIR --config.teacher.checkpoint=$WORK/c100_teacher
"""

from jaxdistill.defaults import cifar100_recipe


def get_config(arg=None):
    c = cifar100_recipe()
    c.student.model = "resnet8x4"
    c.teacher.model = "resnet32x4"
    c.teacher.train.num_steps = c.num_steps  # used only if teacher.checkpoint is empty
    c.teacher.train.learning_rate = c.optimizer.learning_rate
    c.teacher.train.augment = c.data.augment
    c.objective.ce.weight = 0.1
    c.objective.kd = dict(weight=0.9, temperature=4.0)
    if arg:
        raise ValueError(f"configs/cifar100_kd.py: unknown argument '{arg}'")
    return c
