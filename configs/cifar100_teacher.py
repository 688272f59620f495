"""CIFAR-100 resnet32x4 teacher, trained with the recipe of configs/cifar100_methods.py.

  python -m jaxdistill.main --config=configs/cifar100_teacher.py --workdir=$WORK/c100_teacher \
      --config.data.data_dir=$TFDS_DIR
"""

from jaxdistill.recipes import cifar100_recipe


def get_config(arg=None):
    c = cifar100_recipe()
    c.student.model = "resnet32x4"
    c.objective.ce.weight = 1.0
    if arg:
        raise ValueError(f"configs/cifar100_teacher.py: unknown argument '{arg}'")
    return c
