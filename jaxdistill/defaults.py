"""The base run config that every file in `configs/` starts from (one comment a field)."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"       # 'classification' | 'causal_lm' (jaxdistill.tasks)
    c.seed = 0                      # init, data order, augmentation and dropout all derive from it
    c.batch_size = 128              # global batch, split over the mesh's data axis
    c.eval_batch_size = 500         # global eval batch (the last one is padded and masked)
    c.num_steps = 1000              # optimizer steps of this run
    c.log_every = 100               # steps between progress lines / metrics.jsonl records
    c.eval_every = 500              # steps between evaluations (0: only at the end)
    c.checkpoint_every = 500        # steps between checkpoints (0: only at the end)
    c.keep_checkpoints = 3          # newest checkpoints kept (the best by eval accuracy is kept too)
    c.baseline = False              # also train the student from scratch (ce only) into <workdir>/scratch

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist5k"         # TFDS name; mnist5k and digits are built offline from installed packages
    c.data.data_dir = ""            # TFDS data dir; '' = $JAXDISTILL_DATA_DIR or ~/.cache/jaxdistill/tensorflow_datasets
    c.data.reader = "grain"         # 'grain' (array_record via tfds.data_source) or 'tf' (tfds.load, needs the tf extra)
    c.data.train_split = "train"    # split trained on
    c.data.eval_split = "test"      # held-out split evaluated on
    c.data.augment = "none"         # 'none' | 'jitter' (random shift) | 'crop_flip' (pad, crop, flip)
    c.data.augment_pixels = 0       # shift / padding in pixels
    c.data.mean = (0.0,)            # per-channel mean subtracted after scaling to [0, 1]
    c.data.std = (1.0,)             # per-channel std divided by
    c.data.vocab_size = 8192        # token datasets: BPE vocabulary trained with the dataset
    c.data.seq_len = 256            # token datasets: positions per packed window
    c.data.max_documents = 0        # token datasets: keep the first N documents (0 = all)
    c.data.tokenizer = ""           # token datasets: '' = train one; or a tokenizer.json path
    c.data.teacher_seq_len = 0      # task cross_tokenizer: the byte teacher's positions per window (0 = 4 x seq_len)
    c.data.seed = -1                # data order; -1 = config.seed (a population's members share it)

    c.lm = ml_collections.ConfigDict()
    c.lm.chunk_size = 0             # causal_lm: logit terms over chunks of this many positions
    # (0 = the naive form, which holds [B, L, V] logits); must divide data.seq_len
    c.lm.sample_prompt = "def "     # causal_lm demo: the prompt of the samples in its table
    c.lm.sample_tokens = 48         # causal_lm demo: tokens sampled per model

    c.onpolicy = ml_collections.ConfigDict()  # causal_lm on a rows dataset: GKD (jaxdistill.onpolicy)
    c.onpolicy.lambda_ = 0.0        # probability that a batch's completions are the current student's samples
    c.onpolicy.temperature = 1.0    # the student's sampling temperature
    c.onpolicy.top_k = 0            # sample among the k most likely tokens (0: all)
    c.onpolicy.top_p = 1.0          # nucleus mass (1.0: off)
    c.onpolicy.greedy = False       # argmax decoding instead of sampling

    c.seqkd = ml_collections.ConfigDict()  # sequence-level KD (jaxdistill.seqkd)
    c.seqkd.enabled = False         # train on the teacher's completions of the prompts (generated once, stored)
    c.seqkd.temperature = 1.0       # the teacher's sampling temperature
    c.seqkd.top_k = 0               # sample among the k most likely tokens (0: all)
    c.seqkd.top_p = 1.0             # nucleus mass (1.0: off)
    c.seqkd.greedy = True           # argmax decoding (Kim & Rush's beam of one)
    c.seqkd.seed = 0                # sampling key of the generation
    c.seqkd.batch_size = 64         # prompts completed per sampler call

    c.student = ml_collections.ConfigDict()
    c.student.model = "mlp_student"  # registry name (jaxdistill.models.model_names())
    c.student.kwargs = ml_collections.ConfigDict()  # overrides of the registry entry's defaults
    c.student.num_classes = 0       # 0 = the dataset's class count
    c.student.dtype = "float32"     # compute dtype ('float32' or 'bfloat16'); params stay float32
    c.student.hf_checkpoint = ""    # a Hugging Face model dir whose weights start the student (jaxdistill.hf.params)
    c.student.hf_layers = ()        # with hf_checkpoint: its encoder layers the student keeps, e.g. (0, 5); () = all
    c.student.quantization = "none"  # QAT through qwix: 'none' | 'int8' (int8 weights + activations) | 'int4_weights' (jaxdistill.quantization)
    c.student.pruning = ml_collections.ConfigDict()  # weight pruning (jaxdistill.pruning)
    c.student.pruning.method = "none"  # 'none' | 'magnitude' (Zhu & Gupta 2017) | 'nm' (N:M structured)
    c.student.pruning.sparsity = 0.0  # magnitude: final fraction of prunable weights set to zero, in [0, 1)
    c.student.pruning.initial_sparsity = 0.0  # magnitude: the cubic schedule's sparsity at start_step
    c.student.pruning.scope = "global"  # magnitude: 'global' (one threshold over all layers) | 'layer'
    c.student.pruning.start_step = 0  # first mask update (the schedule's t0)
    c.student.pruning.end_step = 0  # last mask update, at the final sparsity (t0 + n dt; < num_steps)
    c.student.pruning.frequency = 100  # steps between mask updates (dt)
    c.student.pruning.n = 2         # nm: weights kept per group of m along a kernel's input axis
    c.student.pruning.m = 4         # nm: group size (must divide every pruned layer's inputs)
    c.student.pruning.params = ("kernel",)  # names of the parameters pruned ('kernel': dense/conv kernels; a decoder's KERNELS)

    c.teacher = ml_collections.ConfigDict()
    c.teacher.model = ""            # registry name; '' = no teacher (plain supervised training)
    c.teacher.kwargs = ml_collections.ConfigDict()  # overrides of the registry entry's defaults
    c.teacher.num_classes = 0       # 0 = the dataset's class count
    c.teacher.checkpoint = ""       # workdir of a teacher run; '' with a teacher.model: train one into <workdir>/teacher
    c.teacher.hf_checkpoint = ""    # a Hugging Face model dir holding the teacher's weights (instead of checkpoint)
    c.teacher.dtype = "float32"     # 'bfloat16' stores and runs the frozen teacher in bf16
    c.teacher.store = ""            # an offline teacher store (python -m jaxdistill.teacher_store): KD
    # reads the teacher's outputs by example index instead of running the teacher
    c.teacher.train = ml_collections.ConfigDict()  # recipe used when the teacher must be trained here
    c.teacher.train.num_steps = 1000     # its optimizer steps
    c.teacher.train.learning_rate = 0.1  # its peak learning rate (other optimizer fields are shared)
    c.teacher.train.augment = "none"     # its augmentation (data.augment_pixels is shared)

    c.extra_teachers = ml_collections.ConfigDict()  # name -> dict(model, kwargs, checkpoint, dtype);
    # a term picks one with teacher='<name>', or teacher='mean' for the average of all
    # teachers' softened probabilities

    c.objective = ml_collections.ConfigDict()  # loss terms: name -> dict(weight=..., <loss fields>)
    c.objective.ce = ml_collections.ConfigDict({"weight": 1.0})

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"        # 'sgd' (momentum) | 'adam' | 'adamw'
    c.optimizer.learning_rate = 0.1  # peak learning rate
    c.optimizer.schedule = "cosine"  # 'cosine' | 'constant' | 'step' (x0.1 at each of decay_fractions)
    c.optimizer.decay_fractions = (0.5, 0.75)  # for 'step': fractions of num_steps where lr drops
    c.optimizer.warmup_steps = 0    # linear warm-up steps
    c.optimizer.momentum = 0.9      # sgd momentum / adam b1
    c.optimizer.nesterov = False    # sgd only
    c.optimizer.weight_decay = 0.0  # on weight matrices and kernels only (L2 for sgd, decoupled for adamw)
    c.optimizer.grad_clip = 0.0     # global-norm clipping; 0 = off

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1)          # devices per axis; one -1 takes the rest
    c.mesh.axes = ("data", "model")  # axis names; the batch is split over 'data'
    c.mesh.student_rule = "replicated"  # 'replicated' | 'fsdp' (over data) | 'tensor' (over model) | 'fsdp_tensor'
    c.mesh.teacher_rule = "replicated"  # same choices, set separately for the teacher
    c.mesh.student_axis_rules = ()  # (logical name, mesh axis | None) pairs over the rule's preset
    c.mesh.teacher_axis_rules = ()  # the same for the teacher (named params: the decoder LMs)
    c.mesh.teacher_devices = 0      # N > 0: the teacher runs on the last N devices, its own mesh

    c.population = ml_collections.ConfigDict()  # N students in one step (jaxdistill.population)
    c.population.size = 0           # N > 0: train N students at once, one teacher pass per batch
    c.population.members = ()       # N dicts of per-member overrides {dotted field: value} (or ()):
    # seed, optimizer.learning_rate / weight_decay / warmup_steps, objective.<term>.weight and
    # objective.<term>.<float field> (e.g. 'objective.kd.temperature')
    c.population.axis = ""          # mesh axis the members are split over ('' = every device holds all)
    return c



def set_fields(config: ml_collections.ConfigDict, fields: dict) -> None:
    """Sets each dotted field of `fields` ('objective.kd.temperature': 2.0) on `config` in
    place, adding a leaf the section lacks (a term's loss argument left at its default)."""
    for key, value in fields.items():
        *sections, leaf = key.split(".")
        node = config
        for name in sections:
            node = node[name]
        with node.unlocked():
            node[leaf] = value
