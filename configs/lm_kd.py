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


def get_config(arg=None):
    c = base_config()
    c.task = "causal_lm"
    c.data.name = "pystdlib"
    c.data.vocab_size = 2048
    c.data.seq_len = 128
    c.data.max_documents = 300      # the first 300 files in path order
    c.batch_size = 16
    c.eval_batch_size = 64
    c.baseline = True

    c.student.model = "lm_student"
    c.teacher.model = "lm_teacher"
    c.teacher.train.num_steps = 600
    c.teacher.train.learning_rate = 3e-3

    c.objective.ce.weight = 0.5
    c.objective.kd = dict(weight=0.5, temperature=1.0)
    c.lm.chunk_size = 32
    c.lm.sample_tokens = 40

    c.num_steps = 600
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 30
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip = 1.0
    c.log_every = 100
    c.eval_every = 300
    c.checkpoint_every = 300

    if arg == "runlocal":
        c.data.max_documents = 120
        c.data.seq_len = 64
        c.teacher.train.num_steps = 150
        c.num_steps = 150
        c.lm.chunk_size = 16
        c.lm.sample_tokens = 24
        c.log_every = 50
        c.eval_every = c.checkpoint_every = 75
    elif arg:
        raise ValueError(f"configs/lm_kd.py: unknown argument '{arg}' (try 'runlocal')")
    return c
