"""On-policy distillation (GKD, Agarwal et al. 2024) of a decoder LM on standard-library
functions: prompt = a function's `def` line and docstring (up to half the window), completion =
its body (`pystdlib_function_rows`: one function per window, every 20th held out).

Teacher `lm_student` (128 wide, trained here into <workdir>/teacher when
config.teacher.checkpoint is empty) -> student `lm_tiny` (64 wide), with the token-level
JSD(beta=0.5) over the completion's positions. The argument picks where the completions come
from (then `,runlocal` shrinks the run):

  (default)   on-policy: every batch's completions are the current student's samples
              (config.onpolicy.lambda_ = 1, temperature 1), scored by the teacher in the step
  mixed       lambda_ = 0.5: half the batches on-policy, half the dataset's completions
  supervised  lambda_ = 0: supervised KD on the dataset's completions
  seqkd       sequence-level KD (Kim & Rush 2016): the teacher's greedy completions of the
              train prompts, generated once and stored (jaxdistill.seqkd), as the targets

  python -m jaxdistill.main --config=configs/lm_onpolicy.py --workdir=/tmp/lm_onpolicy
  python -m jaxdistill.main --config=configs/lm_onpolicy.py:supervised \\
      --config.teacher.checkpoint=/tmp/lm_onpolicy/teacher --workdir=/tmp/lm_supervised
  python -m jaxdistill.main --config=configs/lm_onpolicy.py:seqkd \\
      --config.teacher.checkpoint=/tmp/lm_onpolicy/teacher --workdir=/tmp/lm_seqkd
  python -m jaxdistill.main --config=configs/lm_onpolicy.py:runlocal --workdir=/tmp/lm_op_local
  python -m benchmarks.onpolicy --seeds=3 --out=/tmp/onpolicy_bench  # supervised, seqkd, onpolicy
"""

from jaxdistill.defaults import base_config

MODES = {"onpolicy": 1.0, "mixed": 0.5, "supervised": 0.0, "seqkd": 0.0}  # mode -> lambda_


def get_config(arg=None):
    words = [w for w in (arg or "").split(",") if w]
    modes = [w for w in words if w in MODES]
    unknown = [w for w in words if w not in MODES and w != "runlocal"]
    if unknown or len(modes) > 1:
        raise ValueError(f"configs/lm_onpolicy.py: unknown argument '{arg}' (one of "
                         f"{', '.join(MODES)}, optionally with ',runlocal')")
    mode = modes[0] if modes else "onpolicy"

    c = base_config()
    c.task = "causal_lm"
    c.data.name = "pystdlib_function_rows"
    c.data.vocab_size = 1024
    c.data.seq_len = 64
    c.data.max_documents = 3000      # the first 3000 functions: 2850 train rows, 150 held out
    c.batch_size = 32
    c.eval_batch_size = 150

    c.student.model = "lm_tiny"
    c.teacher.model = "lm_student"
    c.teacher.train.num_steps = 800
    c.teacher.train.learning_rate = 3e-3

    c.objective = {"jsd": {"weight": 1.0, "beta": 0.5}}
    c.onpolicy.lambda_ = MODES[mode]
    c.seqkd.enabled = mode == "seqkd"
    c.lm.sample_prompt = 'def add(a, b):\n    """Sum."""\n'
    c.lm.sample_tokens = 24

    c.num_steps = 300
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip = 1.0
    c.log_every = 50
    c.eval_every = 150
    c.checkpoint_every = 150

    if "runlocal" in words:
        c.data.max_documents = 600
        c.data.vocab_size = 512
        c.batch_size = 16
        c.eval_batch_size = 30
        c.teacher.train.num_steps = 150
        c.num_steps = 200
        c.lm.sample_tokens = 12
        c.log_every = 50
        c.eval_every = c.checkpoint_every = 100
    return c
