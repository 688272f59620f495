"""Token-level distillation of a decoder language model, offline, on the Python standard
library's own sources (`pystdlib`: one document per `.py` file, every 20th file held out,
a byte-level BPE trained on the training files).

Teacher `lm_teacher` (Llama-style: RMSNorm, rotary positions, SwiGLU, grouped-query
attention; trained here into <workdir>/teacher when config.teacher.checkpoint is empty) ->
student `lm_student`, distilled with the forward KL between their next-token distributions
at every position plus next-token cross-entropy, the logit terms computed chunk by chunk over
the sequence; beside the same student trained on cross-entropy alone. The table reports
held-out perplexity, next-token accuracy, top-1 agreement, size, FLOPs per token, tokens/s
and a sample from each model.

  python -m jaxdistill.main --config=configs/lm_kd.py --workdir=/tmp/lm_kd
  python -m jaxdistill.main --config=configs/lm_kd.py:runlocal --workdir=/tmp/lm_kd_local
"""

from jaxdistill.defaults import base_config
from jaxdistill.recipes import lm_recipe


def get_config(arg=None):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/lm_kd.py: unknown argument '{arg}' (try 'runlocal')")
    c = base_config()
    lm_recipe(c, runlocal=arg == "runlocal")
    c.task = "causal_lm"
    c.data.vocab_size = 2048
    c.data.seq_len = 128
    c.baseline = True

    c.student.model = "lm_student"
    c.teacher.model = "lm_teacher"
    c.teacher.train.num_steps = 600
    c.teacher.train.learning_rate = 3e-3

    c.objective.ce.weight = 0.5
    c.objective.kd = dict(weight=0.5, temperature=1.0)
    c.lm.chunk_size = 32
    c.lm.sample_tokens = 40

    if arg == "runlocal":
        c.data.seq_len = 64
        c.teacher.train.num_steps = 150
        c.lm.chunk_size = 16
        c.lm.sample_tokens = 24
    return c
