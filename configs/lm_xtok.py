"""Cross-tokenizer distillation, offline, on the Python standard library's own sources: a
byte-level teacher (vocabulary 256 bytes + 2 specials) distilled into a student with a
byte-level BPE of 8,192 tokens trained on the training files (`pystdlib`, every 20th file
held out).

The teacher `lm_teacher` is trained here into <workdir>/teacher (task causal_lm on the
same files, tokenised by the byte tokenizer, in windows of data.teacher_seq_len bytes),
for many more steps than the students: a byte model must predict ~4 bytes per student
token, and is worth distilling from only when its perplexity per student token (the
table's teacher perplexity) is below the scratch student's (150 steps: 1,436 vs 487).
The student `lm_student` reads the same text windows in BPE tokens (task cross_tokenizer:
both tokenizations of each window, aligned through their character offsets at data-prep
time) and learns from next-token cross-entropy plus, at every aligned position, the KL
between the teacher's next-byte distribution and its own distribution merged onto bytes
(`xtok_kl`) and Universal Logit Distillation (`uld`, Boizard et al. 2024); beside the same
student trained on cross-entropy alone. The table reports held-out perplexity per student
token (the teacher's over the same text, per student token), agreement on the next byte,
size and throughput.

  python -m jaxdistill.main --config=configs/lm_xtok.py --workdir=/tmp/lm_xtok
  python -m jaxdistill.main --config=configs/lm_xtok.py:runlocal --workdir=/tmp/lm_xtok_local
  python -m benchmarks.lm_perplexity --config=configs/lm_xtok.py:runlocal --seeds=3 --out=/tmp/xtok_ppl
  python -m benchmarks.lm_perplexity --config=configs/lm_xtok.py --seeds=3 --out=/tmp/xtok_ppl_full
"""

from jaxdistill.defaults import base_config
from jaxdistill.recipes import lm_recipe


def get_config(arg=None):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/lm_xtok.py: unknown argument '{arg}' (try 'runlocal')")
    c = base_config()
    lm_recipe(c, runlocal=arg == "runlocal")
    c.task = "cross_tokenizer"
    c.data.vocab_size = 8192
    c.data.seq_len = 64
    c.data.teacher_seq_len = 256   # bytes per window: the BPE's ~3.5 bytes/token, with room
    c.baseline = True

    c.student.model = "lm_student"
    c.teacher.model = "lm_teacher"
    c.teacher.train.num_steps = 2000  # a byte model needs many steps to beat BPE students per token
    c.teacher.train.learning_rate = 3e-3

    c.objective.ce.weight = 0.5
    c.objective.xtok_kl = {"weight": 0.5, "temperature": 1.0}
    c.objective.uld = {"weight": 0.01, "temperature": 1.0}  # 0.1 does worse (seed 100)
    c.lm.sample_tokens = 0         # the samples' sampler reads one tokenizer's runs

    if arg == "runlocal":
        c.data.seq_len = 32
        c.data.teacher_seq_len = 128
        c.teacher.train.num_steps = 1000
    return c
