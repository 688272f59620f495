"""Bad input, as a new user makes it: one line naming the flag or field and the fix, a
non-zero exit, no traceback, nothing compiled, the workdir exactly as it was (issue 13 §1).

The tables below are the cases; the next field or flag gets its row:

- ARGV: command lines, parsed in-process by `validate.parse_argv` (the parser of every
  command) with the flags `jaxdistill.main` defines.
- CONFIGS: configs (a base below plus fields; `DELETE` removes one) through
  `experiment.run` in-process: a ValueError whose message starts with the expected text,
  nothing compiled, the workdir's files byte for byte as before.
- CLI: a few of both through the real commands in subprocesses (run at once): exit 1,
  exactly the one line on stderr, the workdir unchanged.
Placeholders `<name>` are paths made by the fixtures (a teacher checkpoint, stores, files).
"""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from array_record.python import array_record_module
from conftest import ROOT, device_env, load_config, set_fields
from ml_collections import config_flags
from refusals import refusal, tree

from jaxdistill import checkpoint, data, experiment, validate
from jaxdistill.data.source import OFFLINE_BUILDERS, TEXT_BUILDERS
from jaxdistill.models import model_names
from jaxdistill.run_setup import prepare_run
from jaxdistill.store import format as store_format
from jaxdistill.tasks import TASKS
from jaxdistill.terms import TERMS

DELETE = object()

# ------------------------------------------------------------------------------------ ARGV
DIGITS = ["--config=configs/digits_kd.py:tiny", "--workdir=<workdir>"]
ARGV = [
    # a misspelt field at any depth, a misspelt section, a top-level typo, an unknown term
    ("field typo", [*DIGITS, "--config.objective.kd.temprature=2"],
     ("config.objective.kd.temprature: loss 'kd' has no field 'temprature'; did you mean "
      "'temperature'? It takes loss, standardize, teacher, temperature, warmup_steps, weight")),
    ("section typo", [*DIGITS, "--config.dat.name=x"],
     "config.dat.name: no such field; did you mean config.data.name?"),
    ("top-level typo", [*DIGITS, "--config.learning_rate=nan"],
     "config.learning_rate: no such field; did you mean config.optimizer.learning_rate?"),
    ("unknown term", [*DIGITS, "--config.objective.foo.loss=bar"],
     ("config.objective.foo: this config has no term 'foo' (its terms: ce, kd); a flag can only "
      "change what the config file sets: add the term there, e.g. c.objective.foo = "
      "dict(weight=1.0)")),
    ("term typo", [*DIGITS, "--config.objective.kdd.weight=1"],
     ("config.objective.kdd: this config has no term 'kdd'; did you mean "
      "config.objective.kd.weight?")),
    ("loss field not in the file", [*DIGITS, "--config.objective.kd.standardize=True"],
     ("config.objective.kd.standardize: not set in the config file, so no flag can set it; add "
      "standardize=... to c.objective.kd there")),
    ("model keyword typo", [*DIGITS, "--config.student.kwargs.widht=3"],
     ("config.student.kwargs.widht: model 'mlp' takes no such keyword; did you mean 'widths'? "
      "It takes dropout, input_dropout, widths")),
    ("not a section", [*DIGITS, "--config.num_steps.x=1"],
     "config.num_steps is 12, not a section; it has no field 'x'"),
    ("value not an int", [*DIGITS, "--config.num_steps=abc"],
     ("config.num_steps: cannot set it to 'abc' (invalid literal for int() with base 10: "
      "'abc'); give an integer like its value in the config, 12")),
    ("value not a bool", [*DIGITS, "--config.baseline=maybe"],
     ("config.baseline: cannot set it to 'maybe' (Non-boolean argument to boolean flag); "
      "give True or False like its value in the config, True")),
    # the config file and the argument after its colon
    ("no such file", ["--config=configs/digit_kd.py", "--workdir=<workdir>"],
     "--config=configs/digit_kd.py: no such file; did you mean configs/digits_kd.py?"),
    ("a directory", ["--config=configs", "--workdir=<workdir>"],
     ("--config=configs: a directory; give one of its config files, e.g. "
      "configs/cifar100_methods.py")),
    ("unknown config argument", ["--config=configs/digits_kd.py:tinny", "--workdir=<workdir>"],
     "--config=configs/digits_kd.py:tinny: unknown argument 'tinny' (try 'tiny')"),
    ("argument not taken", ["--config=<no_arg.py>:x", "--workdir=<workdir>"],
     "--config=<no_arg.py>:x: get_config() of <no_arg.py> takes no argument after the colon"),
    ("not Python", ["--config=<syntax.py>", "--workdir=<workdir>"],
     "--config=<syntax.py>: <syntax.py> line 2: expected ':'; fix the file"),
    ("fails to import", ["--config=<import.py>", "--workdir=<workdir>"],
     ("--config=<import.py>: ModuleNotFoundError: No module named 'no_such_module' (<import.py> "
      "line 1: import no_such_module)")),
    ("fails in get_config", ["--config=<scalar_mean.py>", "--workdir=<workdir>"],
     ("--config=<scalar_mean.py>: TypeError: Could not override field 'mean' (reference). 0.5 "
      "is of original type <class 'float'> and cannot be casted to type <class 'tuple'> "
      "(<scalar_mean.py> line 4: c.data.mean = 0.5)")),
    ("no get_config", ["--config=<no_get.py>", "--workdir=<workdir>"],
     ("--config=<no_get.py>: <no_get.py> defines no get_config(); a config file returns its "
      "config from get_config(arg=None)")),
    ("returns no config", ["--config=<returns_dict.py>", "--workdir=<workdir>"],
     ("--config=<returns_dict.py>: get_config() returned dict, not a ConfigDict; start from "
      "jaxdistill.defaults.base_config()")),
    ("override before the file", ["--config.num_steps=3", "--config=configs/digits_kd.py:tiny",
                                  "--workdir=<workdir>"],
     ("--config.num_steps comes before --config=configs/digits_kd.py:tiny; give --config first "
      "(the overrides apply to its config)")),
    ("override without a file", ["--config.num_steps=3", "--workdir=<workdir>"],
     "--config.num_steps needs a --config=FILE before it; e.g. --config=configs/digits_kd.py"),
    # other flags
    ("unknown flag", ["--config=configs/digits_kd.py:tiny", "--wrkdir=<workdir>"],
     "--wrkdir: unknown flag; did you mean --workdir? (--helpfull lists them)"),
    ("missing flag", ["--config=configs/digits_kd.py:tiny"],
     "--workdir is required; give --workdir=... (Directory for checkpoints, metrics, summary.)"),
    ("missing config", ["--workdir=<workdir>"], ("--config is required; give --config=... (Run "
                                                 "config file.)")),
    ("positional argument", [*DIGITS, "extra"],
     ("unexpected argument(s) ['extra']: give everything as --flag=value (e.g. "
      "--config.num_steps=100)")),
]

BAD_FILES = {  # config files the ARGV and CLI cases name
    "syntax.py": "from jaxdistill.defaults import base_config\ndef get_config(arg=None)\n"
                 "    return base_config()\n",
    "import.py": "import no_such_module\n",
    "scalar_mean.py": "from jaxdistill.defaults import base_config\ndef get_config():\n"
                      "    c = base_config()\n    c.data.mean = 0.5\n    return c\n",
    "no_get.py": "X = 1\n",
    "no_arg.py": "from jaxdistill.defaults import base_config\ndef get_config():\n"
                 "    return base_config()\n",
    "returns_dict.py": "def get_config():\n    return {}\n",
    "junk.json": "{not json",
}

# ----------------------------------------------------------------------------------- CONFIGS
# bases: 'digits' = configs/digits_kd.py:tiny (its teacher trained here, and a baseline);
# 'kd' = the same from the <teacher> checkpoint, no baseline; 'lm' = configs/lm_kd.py shrunk
CONFIGS = [
    # accepted silently, then trained wrongly
    ("digits", {"optimizer.learning_rate": float("nan")},
     "config.optimizer.learning_rate must be a finite number, got nan; e.g. 0.1"),
    ("digits", {"optimizer.learning_rate": float("inf")},
     "config.optimizer.learning_rate must be a finite number, got inf; e.g. 0.1"),
    ("digits", {"optimizer.learning_rate": 0.0},
     "config.optimizer.learning_rate must be a finite number > 0, got 0.0"),
    ("digits", {"keep_checkpoints": 0}, ("config.keep_checkpoints must be an integer >= 1, got "
                                         "0; the newest checkpoint is what a rerun resumes from")),
    ("digits", {"optimizer.warmup_steps": -3},
     "config.optimizer.warmup_steps must be an integer >= 0, got -3"),
    ("digits", {"optimizer.grad_clip": -1.0},
     "config.optimizer.grad_clip must be a number >= 0, got -1.0; 0 turns clipping off"),
    ("digits", {"data.mean": 0.5},
     "config.data.mean must be a per-channel tuple, got 0.5 (float); e.g. (0.5,)"),
    ("digits", {"data.mean": (0.1, 0.2)},
     ("config.data.mean has 2 values, but digits's images have 1 channel; give one value per "
      "channel (or one for all)")),
    ("digits", {"data.std": (0.0,)}, "config.data.std must hold numbers > 0, got (0.0,)"),
    ("digits", {"optimizer.momentum": 1.5}, "config.optimizer.momentum must be in [0, 1), got 1.5"),
    ("digits", {"optimizer.decay_fractions": (0.5, 1.5)},
     "config.optimizer.decay_fractions must hold fractions of num_steps in (0, 1), got (0.5, 1.5)"),
    ("digits", {"optimizer.weight_decay": -0.1},
     "config.optimizer.weight_decay must be a number >= 0, got -0.1"),
    ("digits", {"num_steps": 1.5}, ("config.num_steps must be an integer, got 1.5 (float); e.g. "
                                    "1000")),
    ("digits", {"baseline": "yes"}, ("config.baseline must be True or False, got 'yes' (str); "
                                     "e.g. False")),
    ("digits", {"seed": -1}, "config.seed must be an integer >= 0, got -1"),
    ("digits", {"batch_size": 0}, "config.batch_size must be an integer >= 1, got 0"),
    ("digits", {"log_every": -5}, "config.log_every must be an integer >= 0, got -5"),
    ("digits", {"batch_size": 4096},
     "config.batch_size (4096) exceeds the 1437 examples of digits[train]; use at most 1437"),
    # names: of fields (at any depth), sections, models, losses, teachers, choices
    ("digits", {"learing_rate": 0.1},
     "config.learing_rate: no such field; did you mean config.optimizer.learning_rate?"),
    ("digits", {"optimizer.lr": 0.1}, ("config.optimizer.lr: no such field; config.optimizer "
                                       "has decay_fractions, grad_clip, learning_rate, "
                                       "momentum, name, nesterov, schedule, warmup_steps, "
                                       "weight_decay")),
    ("digits", {"dat": {"name": "digits"}}, "config.dat: no such field; did you mean config.data?"),
    ("digits", {"lm": DELETE}, ("config.lm is missing; start the config from "
                                "jaxdistill.defaults.base_config(), which has every field")),
    ("digits", {"data": "digits"}, ("config.data is a section of fields, got 'digits'; set its "
                                    "fields instead, e.g. config.data.augment")),
    ("digits", {"task": "translation"}, ("config.task: unknown task 'translation'; choose one "
                                         "of <tasks>")),
    ("digits", {"student.model": "mlpp"}, ("config.student.model: unknown model 'mlpp'; did you "
                                           "mean 'mlp'? Available models: <models>")),
    ("digits", {"student.model": ""}, "config.student.model is empty; name a model: <models>"),
    ("digits", {"student.kwargs.widht": (32,)},
     ("config.student.kwargs.widht: model 'mlp' takes no such keyword; did you mean 'widths'? "
      "It takes dropout, input_dropout, widths")),
    ("digits", {"student.dtype": "float16"},
     ("config.student.dtype: 'float16' is unknown; did you mean 'bfloat16'? Choose one of "
      "('float32', 'bfloat16')")),
    ("digits", {"data.reader": "tff"},
     "config.data.reader: 'tff' is unknown; did you mean 'tf'? Choose one of ('grain', 'tf')"),
    ("digits", {"data.augment": "flip"}, ("config.data.augment 'flip' is unknown; choose one of "
                                          "('none', 'jitter', 'crop_flip')")),
    ("digits", {"data.name": ""}, "config.data.name is empty; name a dataset"),
    ("digits", {"data.name": "no_such_dataset"},
     ("config.data.name='no_such_dataset': no such TFDS dataset in data_dir='<data_dir>'; "
      "nothing is ever downloaded. Prepare it where there is network with `tfds build "
      "no_such_dataset --data_dir=<data_dir> --file_format=array_record` (for "
      "config.data.reader='grain'; plain `tfds build` writes tfrecord, for reader 'tf'), or use "
      "an offline dataset: <offline>.")),
    ("digits", {"data.eval_split": "validation"},
     "config.data.eval_split: 'validation' is not a split of digits; it has ['test', 'train']"),
    ("digits", {"data.train_split": "trian"},
     ("config.data.train_split: 'trian' is not a split of digits; did you mean 'train'? It has "
      "['test', 'train']")),
    ("digits", {"mesh.student_rule": "fsdpp"},
     ("config.mesh.student_rule: 'fsdpp' is unknown; did you mean 'fsdp'? Choose one of "
      "('replicated', 'fsdp', 'tensor', 'fsdp_tensor')")),
    ("digits", {"mesh.shape": (3, -1)}, "config.mesh.shape (3, -1) does not divide 8 devices"),
    ("digits", {"mesh.shape": (0, -1)}, ("config.mesh.shape must hold device counts >= 1 (one "
                                         "may be -1: the rest), got (0, -1)")),
    ("digits", {"mesh.teacher_devices": -1},
     "config.mesh.teacher_devices must be an integer >= 0, got -1"),
    ("digits", {"objective.kd.loss": "kld"},
     "config.objective.kd.loss: unknown loss 'kld'; did you mean 'kd'? Available: <losses>"),
    ("digits", {"objective.kdd": {"weight": 1.0}},
     ("config.objective.kdd: unknown loss 'kdd' (the term's name; set loss='...' to pick one); "
      "did you mean 'kd'? Available: <losses>")),
    ("digits", {"objective.kd.teacher": "other"},
     ("config.objective.kd.teacher: no teacher named 'other'; configured: ['teacher'] (or "
      "'mean'); name one, or add it to config.extra_teachers")),
    ("digits", {"objective.kd.temprature": 2.0},
     ("config.objective.kd: unknown field(s) ['temprature'] for loss 'kd'; did you mean "
      "'temperature'? It takes ['loss', 'standardize', 'teacher', 'temperature', "
      "'warmup_steps', 'weight']")),
    ("digits", {"objective.kd.weight": float("nan")},
     "config.objective.kd.weight must be >= 0, got nan"),
    ("digits", {"objective.kd.temperature": 0.0}, ("config.objective.kd.temperature must be > "
                                                   "0, got 0.0")),
    ("digits", {"objective": {}}, ("config.objective is empty; add at least one term, e.g. "
                                   "ce=dict(weight=1.0)")),
    ("digits", {"objective.kd": 0.5}, ("config.objective.kd must be a term, dict(weight=..., "
                                       "<loss fields>), got 0.5")),
    ("digits", {"objective.loss": {"loss": "kd"}}, ("config.objective.loss: 'loss' is a metric "
                                                    "the step reports; name the term "
                                                    "differently (and set loss='...')")),
    ("digits", {"teacher.model": "", "objective.ce.weight": 1.0},
     ("config.objective.kd: loss 'kd' needs a teacher; set config.teacher.model and "
      "config.teacher.checkpoint, or remove the term")),
    # teacher.train.* (the teacher trained here) under its own names
    ("digits", {"teacher.model": "cnnn"},
     "config.teacher.model: unknown model 'cnnn'; did you mean 'cnn'? Available models: <models>"),
    ("digits", {"teacher.train.num_steps": 0},
     "config.teacher.train.num_steps must be an integer >= 1, got 0"),
    ("digits", {"teacher.train.learning_rate": -1.0},
     "config.teacher.train.learning_rate must be a finite number > 0, got -1.0"),
    ("digits", {"teacher.train.augment": "flip"},
     ("config.teacher.train.augment 'flip' is unknown; choose one of ('none', 'jitter', "
      "'crop_flip')")),
    ("digits", {"teacher.train.epochs": 3},
     ("config.teacher.train.epochs: no such field; config.teacher.train has augment, "
      "learning_rate, num_steps")),
    ("digits", {"teacher.kwargs.widths": ()},
     "config.teacher.model: mlp: MLP needs at least one hidden width"),
    ("minilm", {"teacher.hf_checkpoint": ""},
     ("config.teacher.hf_checkpoint: task 'sentence_embedding' has no labels to train its "
      "teacher on; load a trained one (teacher.hf_checkpoint or teacher.checkpoint)")),
    ("digits", {"extra_teachers.second": {"model": "mlp"}},
     ("config.extra_teachers.second.checkpoint is missing; an extra teacher needs model=... and "
      "checkpoint=...")),
    ("digits", {"extra_teachers.mean": {"model": "mlp", "checkpoint": "x"}},
     "config.extra_teachers.mean: 'mean' is a reserved name"),
    ("digits", {"extra_teachers.second": {"model": "mlp", "checkpiont": "x"}},
     ("config.extra_teachers.second.checkpiont: no such field; did you mean 'checkpoint'? An "
      "extra teacher has model, kwargs, checkpoint, dtype, num_classes")),
    # caught too late before: an unknown reader above; a teacher or store that does not fit
    ("kd", {"teacher.checkpoint": "/no/such/teacher"},
     ("config.teacher.checkpoint: no checkpoint found at '/no/such/teacher'; point it at the "
      "workdir of a finished teacher run (a run with no teacher trains one)")),
    ("kd", {"teacher.kwargs.widths": (48,)}, ("config.teacher.checkpoint: "
                                              "'<teacher>/checkpoints/0' does not fit the "
                                              "model: parameter 'params/fc/kernel' is (64, 10) "
                                              "in the checkpoint but (48, 10) in the model; "
                                              "check the teacher's model, kwargs and the "
                                              "dataset's class count")),
    ("kd", {"teacher.num_classes": 5}, ("config.teacher.num_classes is 5 but the dataset has 10 "
                                        "classes; set it to 0 (use the dataset's) or 10")),
    ("kd", {"batch_size": 60}, ("config.batch_size (60) must be a positive multiple of the "
                                "meshes' data-like axes (8 devices)")),
    ("kd", {"data.name": "mnist"}, ("config.data.name='mnist': dataset is not prepared in "
                                    "data_dir='<data_dir>'; nothing is ever downloaded. Prepare "
                                    "it where there is network with `tfds build mnist "
                                    "--data_dir=<data_dir> --file_format=array_record` (for "
                                    "config.data.reader='grain'; plain `tfds build` writes "
                                    "tfrecord, for reader 'tf'), or use an offline dataset: "
                                    "<offline>.")),
    ("kd", {"teacher.store": "<other_store>", "data.augment": "none"},
     ("config.teacher.store='<other_store>' was not written for this run: teacher checkpoint: "
      "teacher_params_sha256 is 000000000000... in the store but d811918f522d... "
      "(config.teacher.checkpoint='<teacher>') in this run. Write a store for it with `python "
      "-m jaxdistill.teacher_store --config=... --store=NEW_DIR` (same config and overrides), "
      "or run the teacher online (config.teacher.store='')")),
    ("kd", {"teacher.store": "<junk.json>", "data.augment": "none"},
     ("config.teacher.store='<junk.json>' is not a teacher store (no store.json; an interrupted "
      "write leaves none); write one with `python -m jaxdistill.teacher_store --config=... "
      "--store=DIR`")),
    ("kd", {"teacher.store": "<other_store>", "data.augment": "jitter"},
     ("config.teacher.store='<other_store>' holds the teacher's outputs on un-augmented images, "
      "which do not describe the randomly augmented ones of config.data.augment='jitter'; set "
      "config.data.augment='none' or run the teacher online (config.teacher.store='')")),
    # the LM path
    ("lm", {"lm.chunk_size": 5},
     "config.lm.chunk_size (5) must be 0 (no chunking) or divide the sequence length 32; e.g. 4"),
    ("lm", {"student.num_classes": 100},
     ("config.student.num_classes: a vocabulary of 100 differs from the 512 tokens of "
      "config.data.vocab_size; teacher and student share the dataset's tokenizer: set it to 0 "
      "(a teacher with its own: task 'cross_tokenizer')")),
    ("lm", {"data.vocab_size": 100}, ("config.data.vocab_size must be an integer >= 258 (256 "
                                      "bytes + 2 special tokens), got 100")),
    ("lm", {"data.seq_len": 1}, "config.data.seq_len must be an integer >= 2, got 1"),
    ("lm", {"mesh.student_axis_rules": ("vocab",)},
     ("config.mesh.student_axis_rules: 'vocab' is not a (logical name, mesh axis) pair, e.g. "
      "('vocab', 'tensor') or ('embed', None)")),
    ("lm", {"mesh.student_axis_rules": (("vocabb", "model"),)},
     ("config.mesh.student_axis_rules: ('vocabb', 'model'): no parameter of the model has the "
      "logical axis 'vocabb'; did you mean 'vocab'? Its axes: ('embed', 'heads', 'kv', "
      "'kv_heads', 'mlp', 'norm', 'vocab')")),
    ("lm", {"mesh.teacher_axis_rules": (("heads", "tensor"),)},
     ("config.mesh.teacher_axis_rules: ('heads', 'tensor') names a mesh axis that is not in "
      "config.mesh.axes ('data', 'model')")),
    ("lm", {"data.tokenizer": "/no/such/tokenizer.json"},
     ("config.data.tokenizer must be '' (train one) or the path of a tokenizer.json file, got "
      "'/no/such/tokenizer.json'")),
    ("lm", {"data.tokenizer": "<junk.json>"}, ("config.data.tokenizer='<junk.json>': not a "
                                               "tokenizer.json (key must be a string at line 1 "
                                               "column 2)")),
    ("lm", {"lm.sample_prompt": ""}, ("config.lm.sample_prompt is empty, so there is nothing to "
                                      "continue; give a prompt (e.g. 'def ') or set "
                                      "config.lm.sample_tokens = 0")),
    ("lm", {"data.reader": "tf"},
     ("config.data.reader='tf' cannot read tokens datasets such as pydoc_topics: use "
      "config.data.reader='grain'")),
    ("lm", {"data.name": "digits"}, ("config.data.name: 'digits' is an image dataset; task "
                                     "'causal_lm' needs a token dataset (pystdlib, "
                                     "pydoc_topics, ...)")),
    ("lm", {"data.augment": "jitter"}, ("config.data.augment: 'jitter' augments images; task "
                                        "'causal_lm' reads tokens, so set it to 'none'")),
    ("lm", {"student.model": "mlp"}, ("config.student.model: 'mlp' is an image model, but task "
                                      "'causal_lm' trains decoder models: decoder, gpt2, lm_20m, lm_base, lm_small, lm_student, lm_teacher, lm_tiny")),
    ("lm", {"student.model": "bert_tiny", "student.kwargs": {}},
     ("config.student.model: 'bert_tiny' is an encoder model, but task 'causal_lm' trains "
      "decoder models: decoder, gpt2, lm_20m, lm_base, lm_small, lm_student, lm_teacher, lm_tiny")),
    ("minilm", {"student.model": "lm_tiny", "student.kwargs": {}},
     ("config.student.model: 'lm_tiny' is a decoder model, but task 'sentence_embedding' "
      "trains encoder models: bert_minilm_l2, bert_minilm_l6, bert_tiny")),
    ("lm", {"objective.crd": {"weight": 1.0}},
     ("config.objective.crd: loss 'crd' does not support task 'causal_lm'; it supports ['at', "
      "'ce', 'fkl', 'hint', 'jsd', 'kd', 'rkl', 'skl', 'srkl', 'tvd']")),
    ("digits", {"task": "causal_lm", "student.model": "lm_tiny", "teacher.model": "lm_tiny",
                "student.kwargs": {}, "teacher.kwargs": {}},
     ("config.data.name: 'digits' is an image dataset; task 'causal_lm' needs a token dataset "
      "(pystdlib, pydoc_topics, ...)")),
    ("digits", {"lm.chunk_size": 16},
     ("config.lm.chunk_size: chunking runs over a sequence; task 'classification' has none, so "
      "set it to 0")),
    ("digits", {"mesh.student_axis_rules": (("embed", None),)},
     ("config.mesh.student_axis_rules: ('embed', None): no parameter of the model has the "
      "logical axis 'embed'; only the decoder LMs' parameters carry logical axis names")),
]
LM = {"data.name": "pydoc_topics", "data.max_documents": 40, "data.vocab_size": 512,
      "data.seq_len": 32, "teacher.model": "lm_tiny", "student.model": "lm_tiny",
      "student.kwargs": {"dim": 32, "depth": 1, "heads": 2, "kv_heads": 1, "mlp_dim": 64},
      "batch_size": 8, "eval_batch_size": 16, "lm.chunk_size": 8, "lm.sample_prompt": "The ",
      "lm.sample_tokens": 6}

# --------------------------------------------------------------------------------------- CLI
# (command module, arguments, the one line on stderr); <workdir> holds a file beforehand
CLI = [
    ("jaxdistill.main", [*DIGITS, "--config.objective.kd.temprature=2"],
     ("jaxdistill: error: config.objective.kd.temprature: loss 'kd' has no field 'temprature'; "
      "did you mean 'temperature'? It takes loss, standardize, teacher, temperature, "
      "warmup_steps, weight")),
    ("jaxdistill.main", [*DIGITS, "--config.optimizer.learning_rate=nan"],
     ("jaxdistill: error: config.optimizer.learning_rate must be a finite number, got nan; "
      "e.g. 0.1")),
    ("jaxdistill.main", ["--config=configs/digits_kd.py:tinny", "--workdir=<workdir>"],
     ("jaxdistill: error: --config=configs/digits_kd.py:tinny: unknown argument 'tinny' (try "
      "'tiny')")),
    ("jaxdistill.main", [*DIGITS, "--config.data.reader=tff"],
     ("jaxdistill: error: config.data.reader: 'tff' is unknown; did you mean 'tf'? Choose one "
      "of ('grain', 'tf')")),
    ("jaxdistill.main", ["--config=configs/digits_kd.py:tiny", "--workdir=<workdir>/keep.txt"],
     ("jaxdistill: error: --workdir=<workdir>/keep.txt: a file, not a directory; give a "
      "directory (new, or a run's to resume)")),
    ("jaxdistill.teacher_store", ["--config=configs/digits_kd.py:tiny", "--store=<workdir>/s",
                                  "--config.dat.name=x"],
     ("jaxdistill.teacher_store: error: config.dat.name: no such field; did you mean "
      "config.data.name?")),
    ("jaxdistill.main", ["--flagfile=<workdir>/no_flags.txt"],
     ("jaxdistill: error: --flagfile=<workdir>/no_flags.txt: no such file; give a file of "
      "--flag=value lines")),
    ("jaxdistill.generate", ["--workdir=<workdir>", "--promt=def "],
     "jaxdistill: error: --promt: unknown flag; did you mean --prompt? (--helpfull lists them)"),
]


# ---------------------------------------------------------------------------------- helpers

def _resolve(value, paths):
    if isinstance(value, str):
        for name, path in paths.items():
            value = value.replace(f"<{name}>", path)
    return value


def _with(config, fields: dict):
    """A copy of `config` with dotted `fields` set as a config file or a library user could
    (any type: the config is rebuilt from a dict; DELETE removes a field), then locked."""
    tree = config.to_dict()
    for key, value in fields.items():
        node, (*path, leaf) = tree, key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    out = ml_collections.ConfigDict(tree)
    out.lock()
    return out


def _base(name, paths):
    if name == "lm":
        return set_fields(load_config("lm_kd", "runlocal"), **LM)
    if name == "minilm":
        return load_config("minilm_kd", "runlocal")
    config = load_config("digits_kd", "tiny")
    if name == "kd":
        set_fields(config, **{"teacher.checkpoint": paths["teacher"], "baseline": False})
    return config


def _save_teacher(config, workdir, seed):
    """A checkpoint of `config`'s teacher with random parameters (host arrays: nothing is
    computed on a device, nothing compiled)."""
    setup = prepare_run(experiment.teacher_config(config))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype),
                         setup.abstract_state)
    ckpts = checkpoint.RunCheckpoints(workdir, asynchronous=False)
    ckpts.save(state, 0)
    ckpts.close()
    return workdir


def _write_store(config, path, teacher_params_sha256):
    """A complete teacher store for `config`'s train split, as written for the teacher whose
    parameters hash to `teacher_params_sha256` (all logits 0)."""
    info = data.prepare(config.data.name)
    n, classes = info.splits[config.data.train_split], info.num_classes
    source = store_format.expected_source(config, teacher_params_sha256, info=info)
    records = np.zeros(n, store_format.record_dtype(classes, {}))
    records["index"] = np.arange(n)
    records["indices"] = np.arange(classes)
    records["logsumexp"] = np.log(classes)
    records["tail_logsumexp"] = -np.inf
    os.makedirs(path)
    name = "records-00000-of-00001.array_record"
    writer = array_record_module.ArrayRecordWriter(os.path.join(path, name), "group_size:1")
    for record in records:
        writer.write(record.tobytes())
    writer.close()
    meta = {"format": store_format.FORMAT, "version": store_format.VERSION, "top_k": classes,
            "num_classes": classes, "num_examples": n, "features": {}, "files": [name],
            "record_bytes": records.dtype.itemsize, "source": source,
            "fingerprint": store_format.fingerprint(source), "teacher": {}}
    with open(os.path.join(path, store_format.META), "w") as f:
        json.dump(meta, f)
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """<teacher>: a teacher checkpoint of the digits demo; <other_store>: a store written
    for another teacher; the bad config files; <workdir> for ARGV."""
    root = tmp_path_factory.mktemp("errors")
    out = {}
    for name, text in BAD_FILES.items():
        (root / name).write_text(text)
        out[name] = str(root / name)
    config = load_config("digits_kd", "tiny")
    out["teacher"] = _save_teacher(config, str(root / "teacher"), seed=1)
    out["other_store"] = _write_store(config, str(root / "other_store"), "0" * 64)
    out["workdir"] = str(root / "argv_workdir")
    out["data_dir"] = os.environ["JAXDISTILL_DATA_DIR"]  # conftest's
    # the lists that grow with jaxdistill, as the messages give them
    out["models"] = ", ".join(model_names())
    out["losses"] = str(sorted(TERMS))
    out["tasks"] = str(sorted(TASKS))
    out["offline"] = ", ".join([*OFFLINE_BUILDERS, *TEXT_BUILDERS])
    return out


# ------------------------------------------------------------------------------------ tests

def _argv_flags(argv):
    """A fresh FlagValues with jaxdistill.main's config and workdir flags."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Run config file.", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.",
                        flag_values=values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=values)
    return values


@pytest.mark.parametrize("name, args, expected", ARGV, ids=[c[0] for c in ARGV])
def test_command_line_mistakes_are_one_line(name, args, expected, paths):
    argv = ["jaxdistill.main", *(_resolve(a, paths) for a in args)]
    message = refusal(lambda: validate.parse_argv(argv, _argv_flags(argv)))
    assert message == _resolve(expected, paths), message


@pytest.mark.parametrize("base, fields, expected", CONFIGS,
                         ids=[f"{b}:{','.join(f) or '-'}" for b, f, _ in CONFIGS])
def test_config_mistakes_are_refused_before_anything_runs(base, fields, expected, paths,
                                                          tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("precious")
    config = _with(_base(base, paths), {k: _resolve(v, paths) for k, v in fields.items()})
    message = refusal(lambda: experiment.run(config, str(workdir)), workdir)
    assert message == _resolve(expected, paths), message


def test_every_shipped_config_passes_the_checks():
    from jaxdistill.recipes import METHODS
    runs = [("digits_kd", None), ("digits_kd", "tiny"), ("lm_kd", None), ("lm_kd", "runlocal"),
            ("mnist_kd", None), ("mnist_kd", "runlocal"), ("mnist_teacher", None),
            ("cifar100_teacher", None), *(("mnist_methods", m) for m in METHODS),
            *(("cifar100_methods", m) for m in METHODS)]
    for name, arg in runs:
        config = load_config(name, arg)
        validate.check_config(config)
        validate.check_config(experiment.scratch_config(config))
        if config.teacher.model:
            validate.check_config(experiment.teacher_config(config))


def test_a_workdir_that_cannot_be_one(tmp_path):
    config = load_config("digits_kd", "tiny")
    (tmp_path / "file").write_text("x")
    file = tmp_path / "file"
    for workdir, message in (
            (file, (f"--workdir={file}: a file, not a directory; give a directory (new, or "
                    "a run's to resume)")),
            (file / "run", (f"--workdir={file}/run: '{file}' is a file, so no directory can "
                            "be made under it; give another directory")),
            ("", "--workdir is empty; give a directory (new, or a run's to resume)")):
        assert refusal(lambda w=workdir: experiment.run(config, str(w)), tmp_path) == message


def test_a_read_only_workdir(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount instead
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                  str(directory)], capture_output=True, check=False)
        if mounted.returncode:
            pytest.skip("cannot mount a read-only file system here")
        why = "is on a read-only file system"
    else:
        directory.chmod(0o555)
        why = "is not writable by this user"
    try:
        message = refusal(lambda: experiment.run(load_config("digits_kd", "tiny"),
                                                 str(directory / "run")), directory)
        assert message == (f"--workdir={directory}/run ('{directory}', where it would be "
                                f"made,): {why}; give a directory this process can write to")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(directory)], check=False)
        else:
            directory.chmod(0o755)


def test_teacher_stage_errors_name_the_users_fields():
    with pytest.raises(ValueError) as e, validate.teacher_stage():
        raise ValueError("config.student.model: x; config.num_steps (3); config.data.augment "
                         "and config.data.augment_pixels; config.optimizer.learning_rate")
    assert str(e.value) == ("config.teacher.model: x; config.teacher.train.num_steps (3); "
                            "config.teacher.train.augment and config.data.augment_pixels; "
                            "config.teacher.train.learning_rate (the teacher trained here)")


def test_the_real_commands_print_one_line_and_leave_the_workdir(paths, tmp_path):
    env = device_env(1)
    runs = []
    for i, (module, args, expected) in enumerate(CLI):
        workdir = tmp_path / str(i)
        workdir.mkdir()
        (workdir / "keep.txt").write_text("precious")
        resolved = [_resolve(a, {**paths, "workdir": str(workdir)}) for a in args]
        proc = subprocess.Popen([sys.executable, "-m", module, *resolved], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((proc, workdir, _resolve(expected, {"workdir": str(workdir)})))
    for proc, workdir, expected in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-3000:]
        assert err.splitlines() == [expected], err[-3000:]
        assert tree(workdir) == {"keep.txt": b"precious"}


def test_reruns_that_change_the_run_name_the_users_fields(tmp_path):
    """A rerun's refusals come before anything is written, in the user's names: a changed
    teacher.train.* of the teacher trained here, and num_steps below a checkpoint's step."""
    from jaxdistill import run_record
    config = load_config("digits_kd", "tiny")
    workdir = tmp_path / "run"
    (workdir / "teacher").mkdir(parents=True)
    run_record.record(experiment.teacher_config(config), str(workdir / "teacher"))
    for fields, step_dir, expected in (
            ({"teacher.train.learning_rate": 0.01}, None,
             ("config.teacher.train.learning_rate: changed since this workdir was started (0.05 "
              "-> 0.01); use a new --workdir or restore the old value (the teacher trained "
              "here)")),
            ({}, "teacher/checkpoints/40", ("config.teacher.train.num_steps (20) is below the "
             f"step of the newest checkpoint in {workdir}/teacher (40); give at least 40, or "
             "use a new --workdir (the teacher trained here)")),
            ({}, "checkpoints/30", (f"config.num_steps (12) is below the step of the newest "
             f"checkpoint in {workdir} (30); give at least 30, or use a new --workdir"))):
        if step_dir:
            (workdir / step_dir).mkdir(parents=True)
        assert refusal(lambda f=fields: experiment.run(_with(config, f), str(workdir)),
                       workdir) == expected
