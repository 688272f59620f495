"""Quantization and pruning of a decoder LM student (`jaxdistill.quantization`,
`jaxdistill.pruning` on `Decoder.KERNELS`: the blocks' attention projections and SwiGLU MLP).

The int8 QAT student's training loss, computed chunk by chunk by the real train step, equals a
float64 NumPy fake-quant forward in which exactly those kernels and their input activations
are quantized (the attention products, the embedding and the tied head float); an int8 student
pruned by magnitude on the cubic schedule trains, is resumed from its step-2 checkpoint to the
same parameters, and keeps its pruned weights exactly zero (the embedding dense); N:M groups
run along each kernel's declared input axis; bad combinations are refused in one line with
nothing written; export refuses an LM workdir (tests/test_export.py) and `integer_model` an LM
student."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, set_fields
from flax import nnx
from refusals import refusal
from test_decoder import _np_forward, _np_rms, _np_rope

import jaxdistill as jd
from jaxdistill import checkpoint, data, pruning, quantization
from jaxdistill.experiment import scratch_config
from jaxdistill.models import build_model
from jaxdistill.models.decoder import Decoder
from jaxdistill.run_setup import prepare_run
from jaxdistill.train import data_seed

V, L, B = 512, 32, 8  # vocabulary, window length, batch
KERNELS = ("q", "k", "v", "o", "gate", "up", "down")


def lm_config(**overrides):
    """configs/lm_kd.py:runlocal shrunk to an lm_tiny student on a small pydoc_topics, trained
    on cross-entropy alone (no teacher), the logit terms chunked."""
    config = scratch_config(load_config("lm_kd", "runlocal"))
    config.objective.ce.weight = 1.0
    config.lock()
    return set_fields(config, **{
        "data.name": "pydoc_topics", "data.max_documents": 48, "data.vocab_size": V,
        "data.seq_len": L, "student.model": "lm_tiny", "batch_size": B, "eval_batch_size": 32,
        "num_steps": 4, "log_every": 0, "eval_every": 4, "checkpoint_every": 2,
        "optimizer.warmup_steps": 0, "lm.chunk_size": 16, "lm.sample_tokens": 0,
        "student.quantization": "int8", **overrides})


# --------------------------------------------------------------------------- the reference

def _fq_weight(w, inputs):
    """int8 fake-quant of kernel `w`: symmetric per output channel (max over the `inputs`
    axes), narrow range: scale max|w| / 127, round, clip [-127, 127]."""
    scale = np.abs(w).max(axis=inputs, keepdims=True) / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def _fq_act(x, inputs):
    """int8 fake-quant of activation `x` per row (over its contracted `inputs` axes):
    asymmetric over [min(0, min x), max(0, max x)] in 255 steps, integer zero point."""
    lo = np.minimum(x.min(axis=inputs, keepdims=True), 0.0)
    hi = np.maximum(x.max(axis=inputs, keepdims=True), 0.0)
    step = (hi - lo) / 255.0
    zero = np.round(-128.0 - lo / step)
    return (np.clip(np.round(x / step + zero), -128, 127) - zero) * step


def _np_int8_decoder(p, tokens, segment_ids, positions, heads, kv_heads):
    """lm_tiny's logits in float64 with every activation x kernel product of `KERNELS`
    quantized (`_fq_act(x) @ _fq_weight(W)`); attention (causal within each packed
    document), the embedding and the tied head float."""
    length = tokens.shape[1]
    allowed = (np.tril(np.ones((length, length), bool))[None]
               & (segment_ids[:, :, None] == segment_ids[:, None, :]))[:, None]
    x = p["embedding"][tokens]
    for i in range(len(p["blocks"])):
        blk = p["blocks"][i]
        a, m = blk["attn"], blk["mlp"]
        h = _fq_act(_np_rms(x, blk["attn_norm"]["scale"]), (-1,))
        q, k, v = (np.einsum("bld,dnh->blnh", h, _fq_weight(a[n], (0,))) for n in "qkv")
        q, k = _np_rope(q, positions), _np_rope(k, positions)
        k, v = (np.repeat(t, heads // kv_heads, axis=2) for t in (k, v))
        s = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
        s = np.where(allowed, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        context = np.einsum("bnqk,bknh->bqnh", w / w.sum(-1, keepdims=True), v)
        x = x + np.einsum("blnh,nhd->bld", _fq_act(context, (-2, -1)), _fq_weight(a["o"], (0, 1)))
        h = _fq_act(_np_rms(x, blk["mlp_norm"]["scale"]), (-1,))
        gate, up = (h @ _fq_weight(m[n], (0,)) for n in ("gate", "up"))
        x = x + _fq_act(gate / (1 + np.exp(-gate)) * up, (-1,)) @ _fq_weight(m["down"], (0,))
    return _np_rms(x, p["norm"]["scale"]) @ p["embedding"].T


def _np_ce(logits, targets, weights):
    """The per-token weighted mean cross-entropy."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return np.sum(weights * nll) / max(np.sum(weights), 1.0)


# --------------------------------------------------------------------------- pruning

PRUNED = {"student.pruning.method": "magnitude", "student.pruning.sparsity": 0.5,
          "student.pruning.start_step": 0, "student.pruning.end_step": 2,
          "student.pruning.frequency": 1, "log_every": 1}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """An int8 student pruned by global magnitude (0 -> 0.5 over steps 0..2), 4 steps with
    checkpoints at 2 and 4; then a copy without step 4, rerun: it resumes at 2, across the
    mask update of step 2."""
    root = tmp_path_factory.mktemp("compress_lm")
    config = lm_config(**PRUNED)
    run, resumed = str(root / "run"), str(root / "resumed")
    summary = jd.train_and_evaluate(config, run)
    shutil.copytree(run, resumed)
    shutil.rmtree(os.path.join(resumed, checkpoint.CHECKPOINT_DIR, "4"))
    os.remove(os.path.join(resumed, "summary.json"))
    resumed_summary = jd.train_and_evaluate(config, resumed)
    setup = prepare_run(config)
    abstract = {"params": setup.abstract_state.params["student"],
                "batch_stats": setup.abstract_state.batch_stats}
    params = checkpoint.load_teacher(run, abstract, field="run")["params"]
    return config, run, summary, resumed_summary, setup, params


def _logged(workdir, field):
    """{step: value} of a train metric in the run's metrics.jsonl (the line of step t + 1
    holds the metrics of the update from step t)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"] - 1: r[field] for r in map(json.loads, f) if r["split"] == "train"}


def test_int8_lm_training_loss_is_the_numpy_fake_quant_reference(pruned):
    """The run's step-0 loss (its chunked ce, 8 devices; the masks still dense) on its first
    batch, from its initial parameters, against `_np_int8_decoder`; the float forward is
    farther off."""
    config, run, _, _, setup, _ = pruned
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(
        jax.random.PRNGKey(config.seed))
    batch = jax.device_get(next(iter(data.make_train_iterator(
        setup.info, split=config.data.train_split, reader=config.data.reader,
        global_batch_size=config.batch_size, seed=data_seed(config),
        sharding=setup.batch_sharding))))
    p = jax.tree.map(lambda x: np.asarray(x, np.float64),
                     nnx.to_pure_dict(jax.device_get(state.params["student"])))
    args = (batch["inputs"], batch["segment_ids"], batch["positions"])
    want = _np_ce(_np_int8_decoder(p, *args, heads=4, kv_heads=2), batch["targets"],
                  batch["weights"])
    float_ce = _np_ce(_np_forward(p, *args, heads=4, kv_heads=2), batch["targets"],
                      batch["weights"])
    loss = _logged(run, "loss")[0]
    assert abs(loss - want) < 1e-5 and abs(float_ce - want) > 5e-4


def test_pruned_lm_weights_stay_exactly_zero_through_a_resume(pruned):
    _, run, summary, resumed, setup, params = pruned
    assert summary["steps"] == resumed["steps"] == 4 and np.isfinite(summary["student_perplexity"])
    assert resumed["student_params_sha256"] == summary["student_params_sha256"]
    kernels = pruning.prunable(params, setup.ctx.pruning.params)
    assert sorted({k.split("/")[-2] for k in kernels}) == sorted(KERNELS) and len(kernels) == 14
    total = sum(w.size for w in kernels.values())
    zeros = sum(int(np.sum(np.asarray(w) == 0)) for w in kernels.values())
    assert zeros == round(0.5 * total)  # global magnitude: exactly the target's count
    flat = nnx.to_flat_state(params)
    dense = [np.asarray(v[...]) for k, v in flat if k[-1] in ("embedding", "scale")]
    assert dense and all(np.count_nonzero(x) == x.size for x in dense)  # embedding, norms
    logged = _logged(run, "sparsity")
    s = setup.ctx.pruning  # the cubic schedule at the masks' steps 0, 1, 2 (then held)
    want = [float(pruning.target_sparsity(s, min(t, 2))) for t in range(4)]
    assert want[1] == 0.4375 and sorted(logged) == [0, 1, 2, 3]
    np.testing.assert_allclose([logged[t] for t in range(4)], want, atol=1.0 / total)


def test_two_four_groups_run_along_each_kernels_input_axis(pruned):
    s = pruning.spec(lm_config(**{"student.pruning.method": "nm"}))
    assert s.params == KERNELS and dict(s.input_axes) == Decoder.KERNELS
    params = pruned[-1]  # the trained student's (its zeros: ties broken by position)
    masks = jax.jit(lambda p: pruning.new_masks(s, p, 0))(params)
    weights = pruning.prunable(params, s.params)
    assert sorted(masks) == sorted(weights) and len(masks) == 14
    for key, mask in masks.items():
        axis = Decoder.KERNELS[key.split("/")[-2]]
        w = np.moveaxis(np.abs(np.asarray(weights[key])), axis, -1)
        groups = w.reshape(*w.shape[:-1], -1, 4)
        kept = np.moveaxis(np.asarray(mask), axis, -1).reshape(groups.shape)
        assert (kept.sum(-1) == 2).all()
        smallest_kept = np.where(kept, groups, np.inf).min(-1)
        largest_pruned = np.where(kept, -np.inf, groups).max(-1)
        assert (smallest_kept >= largest_pruned).all()  # the 2 largest |w| of every 4


@pytest.mark.parametrize("fields, message", [
    ({"student.pruning.method": "nm", "student.pruning.m": 32},  # divides q's 64, not o's 16
     ("config.student.pruning.m=32 does not divide the input axis of 'blocks/0/attn/o/value' "
      "(shape (4, 16, 64): 16 inputs); choose an m that divides every pruned layer or leave it "
      "out of config.student.pruning.params")),
    ({"student.pruning.method": "nm", "student.pruning.params": ("embedding_table",)},
     ("config.student.pruning.params ('embedding_table',): the student has no parameter of "
      "those names with 2 or more axes to prune")),
])
def test_bad_combinations_are_refused_in_one_line_before_anything_is_written(tmp_path, fields,
                                                                               message):
    workdir = tmp_path / "run"
    assert refusal(lambda: jd.train_and_evaluate(lm_config(**fields), str(workdir)),
                   workdir) == message


def test_no_integer_form_for_an_lm_student():
    lm = nnx.eval_shape(lambda: build_model("lm_tiny", num_classes=V, input_shape=(L,),
                                            rngs=nnx.Rngs(0)))
    assert refusal(lambda: quantization.integer_model(lm, "int8", (L,), jnp.int32)) == (
        "integer_model: a Decoder student has no integer form here (its QAT quantizes its "
        "KERNELS only); export takes classifiers")
