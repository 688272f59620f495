"""CIFAR-100, resnet32x4 -> resnet8x4, one config per method: `configs/cifar100_methods.py:<method>`.

The recipe of the CRD/DKD papers' public code: 240 epochs, SGD momentum 0.9, lr 0.05
decayed x0.1 at epochs 150/180/210, weight decay 5e-4, batch 64, random crop (pad 4) and
horizontal flip. Needs TFDS `cifar100` prepared in data_dir (nothing is downloaded) and
an accelerator; the teacher is a run of configs/cifar100_teacher.py.

Published top-1 (%) each method should reach (teacher 79.42, student from scratch 72.50):

| method | published | source |
|---|---|---|
| kd     | 73.33 | CRD paper's code (Tian et al., ICLR 2020), Table 1 |
| fitnet | 73.50 | CRD |
| at     | 73.44 | CRD |
| sp     | 72.94 | CRD |
| rkd    | 71.90 | CRD |
| pkt    | 73.64 | CRD |
| crd    | 75.51 | CRD |
| dkd    | 76.32 | DKD paper's code (Zhao et al., CVPR 2022), Table 1 |
| lskd   | 76.62 | logit standardisation code (Sun et al., CVPR 2024), README table 1 |
| lsdkd  | 77.01 | Sun et al. |
| adversarial, fkl, rkl, jsd, tvd | no number for this pair in those tables | |

AT sums over the three stages (stage1..3 of both models, as RepDistiller's `feat[1:-1]`),
SP compares stage3; CRD draws 16,384 negatives (from other classes when the run provides
the training split's labels: `negatives='auto'`).

  python -m jaxdistill.main --config=configs/cifar100_methods.py:crd --workdir=$WORK/c100_crd \
      --config.data.data_dir=$TFDS_DIR --config.teacher.checkpoint=$WORK/c100_teacher
"""

from jaxdistill.recipes import (
    CIFAR_TRAIN_EXAMPLES,
    cifar100_recipe,
    method_objective,
    set_objective,
)


def get_config(arg=None):
    c = cifar100_recipe()
    c.student.model = "resnet8x4"
    c.teacher.model = "resnet32x4"
    c.teacher.train.num_steps = c.num_steps  # used only when teacher.checkpoint is empty
    c.teacher.train.learning_rate = c.optimizer.learning_rate
    c.teacher.train.augment = c.data.augment
    terms = method_objective(arg or "kd", hint_feature="stage2", map_feature="stage3",
                             at_features=("stage1", "stage2", "stage3"))
    if "dkd" in terms:  # DKD warms its loss up over the first 20 epochs
        terms["dkd"]["warmup_steps"] = 20 * CIFAR_TRAIN_EXAMPLES // c.batch_size
    if "crd" in terms:
        terms["crd"]["num_negatives"] = 16384
    set_objective(c, terms)
    return c
