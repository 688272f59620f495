"""Token-level distillation from a pretrained Hugging Face decoder (Llama, Qwen2, Mistral or
GPT-2: a directory with config.json, *.safetensors and tokenizer.json, e.g. from
`save_pretrained`), offline, on the Python standard library's own sources (`pystdlib`).

The teacher is read from that directory (`config.teacher.hf_checkpoint`), its registry model
and kwargs derived from its config.json (`jaxdistill.hf.registry_entry`), and the data is
tokenised with its own tokenizer.json (which must hold `<|endoftext|>`, the end of a document:
GPT-2's and Qwen2's do). Student `lm_student` over the same vocabulary, distilled with the
forward KL between their next-token distributions plus next-token cross-entropy, chunk by
chunk over the sequence. The argument is the directory (no commas), then optionally
`,runlocal`:

  python -m jaxdistill.main --config=configs/lm_hf_kd.py:/path/to/model --workdir=/tmp/lm_hf_kd
  python -m jaxdistill.main --config=configs/lm_hf_kd.py:/path/to/model,runlocal --workdir=/tmp/lm_hf
"""

import os

from jaxdistill import hf
from jaxdistill.defaults import base_config
from jaxdistill.hf import files
from jaxdistill.recipes import lm_recipe


def get_config(arg=None):
    path, _, option = (arg or "").partition(",")
    if not path:
        raise ValueError("configs/lm_hf_kd.py needs the teacher's directory: "
                         "--config=configs/lm_hf_kd.py:/path/to/model[,runlocal]")
    if option not in ("", "runlocal"):
        raise ValueError(f"configs/lm_hf_kd.py: unknown option '{option}' (try 'runlocal')")
    c = base_config()
    lm_recipe(c, runlocal=option == "runlocal")
    c.task = "causal_lm"
    c.data.tokenizer = os.path.join(path, files.TOKENIZER)
    c.data.vocab_size = int(files.read_config(path)["vocab_size"])  # the run checks the tokenizer's
    c.data.seq_len = 128

    c.student.model = "lm_student"
    c.teacher.hf_checkpoint = path
    c.objective.ce.weight = 0.5
    c.objective.kd = {"weight": 0.5, "temperature": 1.0}
    c.lm.chunk_size = 32
    c.lm.sample_tokens = 40

    if option == "runlocal":
        c.data.seq_len = 64
        c.lm.chunk_size = 16
        c.lm.sample_tokens = 24
    c.teacher.model, kwargs = hf.registry_entry(path, max_seq_len=c.data.seq_len)
    c.teacher.kwargs = kwargs
    return c
