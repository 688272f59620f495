"""Hugging Face decoder checkpoints (jaxdistill.hf): tiny random Llama / Qwen2 / Mistral / GPT-2
models made and saved by `transformers` itself, loaded without torch, against transformers'
own logits and final hidden states on the same tokens (float32; a sharded save; a bfloat16
save); parameters placed straight into a mesh's shardings; GPT-2's KV-cache decoding against
its full forward pass; every bad input in one line; and a causal-LM distillation run whose
frozen teacher is a saved Llama with its own tokenizer.json."""

import copy
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import load_config, set_fields
from jax.sharding import PartitionSpec as P
from refusals import refusal

from jaxdistill import data, hf, parallel
from jaxdistill import train as train_module
from jaxdistill.data import tokenizer as bpe
from jaxdistill.hf import files
from jaxdistill.models import logical_axes
from jaxdistill.run_setup import prepare_run

V, L = 96, 16  # vocabulary and tokens per sequence of the comparison models
TOKENS = np.random.RandomState(0).randint(0, V, (2, L))
DECODER = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "rope_theta": 500.0, "rms_norm_eps": 1e-5}
# name -> (config, model class, config kwargs)
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              {**DECODER, "tie_word_embeddings": False}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              {**DECODER, "tie_word_embeddings": True}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                {**DECODER, "sliding_window": 32, "num_key_value_heads": 1}),
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
             {"vocab_size": V, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
              "bos_token_id": 0, "eos_token_id": 0}),
}
# float32 through two blocks in another order of operations: about 1e-6 apart on logits of
# size ~1 (measured); atol covers entries near zero, where rtol alone asks for exact equality
RTOL, ATOL = 1e-4, 1e-5


def _random_model(name: str):
    """A transformers model of family `name`, every parameter (biases and norms included)
    drawn at random so that no layout error can hide behind zeros or ones."""
    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _reference(model, tokens=TOKENS) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model(torch.tensor(tokens), output_hidden_states=True)
    return out.logits.float().numpy(), out.hidden_states[-1].float().numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (directory, transformers model)} of every family, saved with save_pretrained;
    plus 'llama_sharded' (the Llama in ~10 kB shards) and 'llama_bf16' (saved in bfloat16)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in FAMILIES:
        model = _random_model(name)
        model.save_pretrained(root / name)
        out[name] = (str(root / name), model)
    llama = out["llama"][1]
    llama.save_pretrained(root / "llama_sharded", max_shard_size="10KB")
    rounded = _random_model("llama")  # float32 weights that bfloat16 holds exactly
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    copy.deepcopy(rounded).to(torch.bfloat16).save_pretrained(root / "llama_bf16")
    out["llama_sharded"] = (str(root / "llama_sharded"), llama)
    out["llama_bf16"] = (str(root / "llama_bf16"), rounded)  # (its rotary buffers stay float32)
    return out


@pytest.mark.parametrize("name", [*FAMILIES, "llama_sharded", "llama_bf16"])
def test_logits_and_last_hidden_match_transformers(saved, name):
    path, reference = saved[name]
    logits, hidden = _reference(reference)
    model, info = hf.from_pretrained(path, max_seq_len=32)
    got_logits, features = model(jnp.asarray(TOKENS), train=False)
    np.testing.assert_allclose(got_logits, logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(features["last_hidden"], hidden, rtol=RTOL, atol=ATOL)
    assert features["last_hidden"].shape == (2, L, 32)
    family = "gpt2" if name == "gpt2" else "decoder"
    n_params = sum(p.numel() for n, p in reference.named_parameters())  # tied: counted once
    assert info == {"family": family, "model_type": name.split("_")[0], "vocab_size": V,
                    "hidden_size": 32, "layers": 2, "max_seq_len": 32, "dtype": "float32",
                    "params": n_params, "tokenizer": ""}


def test_reader_handles_shards_and_bfloat16(saved):
    assert len(files.weight_files(saved["llama_sharded"][0])) > 2
    single, sharded = (files.read_tensors(saved[n][0]) for n in ("llama", "llama_sharded"))
    assert sorted(single) == sorted(sharded)
    assert all(np.array_equal(single[k], sharded[k]) for k in single)
    bf16 = files.read_tensors(saved["llama_bf16"][0])
    state = saved["llama_bf16"][1].state_dict()
    name = "model.layers.1.mlp.down_proj.weight"
    assert bf16[name].dtype == jnp.bfloat16  # the stored bits, widened exactly below
    assert np.array_equal(bf16[name].astype(np.float32), state[name].numpy())


def test_params_land_in_the_given_shardings(saved):
    mesh = parallel.make_mesh((2, 4), ("data", "model"))

    def shardings(state):
        return parallel.tree_shardings(state, mesh, "fsdp_tensor",
                                       parallel.names_by_path(logical_axes(state)))
    path, reference = saved["llama"]
    model, _ = hf.from_pretrained(path, max_seq_len=32, shardings=shardings)
    embedding = model.embedding[...]  # [vocab, embed]: vocab over 'model', embed over 'data'
    assert embedding.sharding.spec == P("model", "data")
    assert {s.data.shape for s in embedding.addressable_shards} == {(V // 4, 32 // 2)}
    assert model.blocks[0].attn.q[...].sharding.spec == P("data", "model", None)  # embed, heads
    logits, _ = jax.jit(lambda m, x: m(x))(model, jnp.asarray(TOKENS))
    np.testing.assert_allclose(logits, _reference(reference)[0], rtol=RTOL, atol=ATOL)


def test_gpt2_kv_cache_decoding_equals_the_full_forward(saved):
    model, _ = hf.from_pretrained(saved["gpt2"][0], max_seq_len=32)
    full, _ = model(jnp.asarray(TOKENS))
    decode = jax.jit(lambda m, tokens, cache, start: m.decode(tokens, cache, start))
    prefill, cache = decode(model, jnp.asarray(TOKENS[:, :10]), model.init_cache(2, L), 0)
    steps = [prefill]
    for i in range(10, L):  # one token at a time, at positions 10 .. L-1
        logits, cache = decode(model, jnp.asarray(TOKENS[:, i:i + 1]), cache, i)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=RTOL, atol=ATOL)


def _copy_with_config(src: str, dst, **changes) -> str:
    shutil.copytree(src, dst)
    config = files.read_config(src)
    config.update(changes)
    with open(os.path.join(dst, files.CONFIG), "w") as f:
        json.dump(config, f)
    return str(dst)


def test_bad_checkpoints_are_refused_in_one_line(saved, tmp_path):
    llama = saved["llama"][0]
    cases = [  # (checkpoint, keywords, the message: <path> is the checkpoint)
        (str(tmp_path / "absent"), {}, ("'<path>' is not a directory; point at a Hugging Face "
                                        "model directory (config.json + model.safetensors, e.g. "
                                        "from save_pretrained)")),
        (_copy_with_config(llama, tmp_path / "t5", model_type="t5"), {},
         "<path>: model_type 't5' is not supported; supported: bert, gpt2, llama, mistral, qwen2"),
        (_copy_with_config(llama, tmp_path / "yarn",
                           rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), {},
         ("llama checkpoint: rope type 'yarn' is not supported (only the default rotary "
          "embedding); use a checkpoint without rope scaling")),
        (saved["mistral"][0], {"max_seq_len": 48},
         ("mistral checkpoint: sliding_window 32 is shorter than the sequence length 48; "
          "sliding-window attention is not supported, so use a sequence length "
          "(config.data.seq_len / max_seq_len) <= 32")),
        (llama, {"max_seq_len": 128},
         "llama checkpoint: max_seq_len 128 exceeds the checkpoint's max_position_embeddings 64"),
        (_copy_with_config(llama, tmp_path / "mlp_bias", mlp_bias=True), {},
         "llama checkpoint: mlp_bias=true is not supported by the decoder"),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((str(empty), {}, ("'<path>' has no config.json; is it a Hugging Face model "
                                   "directory?")))
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    shutil.copy(os.path.join(llama, files.CONFIG), weightless)
    cases.append((str(weightless), {}, ("'<path>' has neither model.safetensors nor "
                                        "model.safetensors.index.json")))
    deeper = _copy_with_config(llama, tmp_path / "deeper", num_hidden_layers=3)
    cases.append((deeper, {}, ("llama checkpoint: tensor 'model.layers.2.input_layernorm.weight' "
                               "is missing; is the checkpoint complete and of this model_type?")))
    for path, kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            hf.from_pretrained(path, **kwargs)
        assert str(err.value) == message.replace("<path>", str(path))


# --------------------------------------------------------------- a saved Llama as the teacher

@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory):
    """A random Llama saved with save_pretrained beside a tokenizer.json (a byte-level BPE
    trained with `tokenizers` on a few strings), its vocabulary the tokenizer's."""
    path = tmp_path_factory.mktemp("llama_teacher")
    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the dog.",
             "for i in range(10):\n    print(i)\n"] * 4
    tok = bpe.train(texts, vocab_size=300)
    assert tok.get_vocab_size() == 300
    tok.save(str(path / files.TOKENIZER))
    model = _random_model_of(transformers.LlamaConfig, transformers.LlamaForCausalLM,
                             {**DECODER, "vocab_size": tok.get_vocab_size()})
    model.save_pretrained(path)
    return str(path), tok.get_vocab_size()


def _random_model_of(config_cls, model_cls, kwargs):
    torch.manual_seed(1)
    return model_cls(config_cls(**kwargs)).eval()


def _kd_config(teacher_dir: str, vocab: int, **overrides):
    """configs/lm_hf_kd.py:<teacher_dir>,runlocal shrunk to 2 steps of lm_tiny on 24 pydoc
    topics (tokenised with the teacher's tokenizer.json)."""
    config = load_config("lm_hf_kd", f"{teacher_dir},runlocal")
    assert config.data.vocab_size == vocab and config.teacher.hf_checkpoint == teacher_dir
    return set_fields(config, **{
        "data.name": "pydoc_topics", "data.max_documents": 24, "data.seq_len": L,
        "student.model": "lm_tiny", "batch_size": 8, "eval_batch_size": 32, "num_steps": 2,
        "log_every": 1, "eval_every": 0, "checkpoint_every": 0, "optimizer.warmup_steps": 0,
        "lm.chunk_size": 0, "lm.sample_tokens": 8, **overrides})


def test_distillation_run_with_a_saved_llama_teacher(llama_teacher, tmp_path):
    """2 steps of KD from the saved Llama: the run's teacher perplexity on the eval
    split equals the one computed here with the checkpoint loaded by from_pretrained (which
    the tests above pin to transformers), so the run's teacher is the checkpoint."""
    teacher_dir, vocab = llama_teacher
    config = _kd_config(teacher_dir, vocab)
    summary = train_module.train_and_evaluate(config, str(tmp_path / "run"))
    teacher, info = hf.from_pretrained(teacher_dir, max_seq_len=L)
    assert info["tokenizer"] == config.data.tokenizer
    setup = prepare_run(config)
    forward = jax.jit(lambda m, b: m(b["inputs"], segment_ids=b["segment_ids"],
                                     positions=b["positions"])[0])
    nll, count = 0.0, 0.0
    for batch in data.make_eval_iterator(setup.info, split=config.data.eval_split,
                                         reader="grain", global_batch_size=32,
                                         sharding=setup.batch_sharding):
        logits = np.asarray(forward(teacher, batch), np.float64)
        top = logits.max(-1, keepdims=True)  # float64 log-softmax
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        target = np.take_along_axis(logp, np.asarray(batch["targets"])[..., None], -1)
        weights = np.asarray(batch["weights"], np.float64)
        nll -= float(np.sum(target[..., 0] * weights))
        count += float(weights.sum())
    assert summary["steps"] == 2 and count > 0
    np.testing.assert_allclose(summary["teacher_perplexity"], np.exp(nll / count), rtol=1e-5)
    assert np.isfinite(summary["student_perplexity"])


@pytest.mark.parametrize("overrides, message", [  # <teacher>: its path; <...>: any
    ({"data.tokenizer": "", "data.vocab_size": 320},
     ("config.teacher.hf_checkpoint: '<teacher>' has a vocabulary of 300 tokens but the "
      "dataset's tokenizer '<...>' has 320; tokenise with the teacher's own: "
      "config.data.tokenizer = its tokenizer.json")),
    ({"teacher.kwargs.rope_theta": 10_000.0},
     ("config.teacher.hf_checkpoint: '<teacher>' is registry model 'decoder' with <...>, but "
      "the config builds 'decoder' with rope_theta=10000.0; set config.teacher.model and "
      "kwargs from jaxdistill.hf.registry_entry(path)")),
    ({"teacher.model": "gpt2", "teacher.kwargs": {}},
     ("config.teacher.hf_checkpoint: '<teacher>' is registry model 'decoder' with <...>, but "
      "the config builds 'gpt2'; set config.teacher.model and kwargs from "
      "jaxdistill.hf.registry_entry(path)")),
])
def test_a_teacher_that_does_not_fit_the_run_is_refused(llama_teacher, tmp_path, overrides,
                                                        message):
    config = _kd_config(*llama_teacher, **overrides)
    refused = refusal(lambda: prepare_run(config))
    pattern = re.escape(message.replace("<teacher>", llama_teacher[0])).replace("<\\.\\.\\.>", ".+")
    assert re.fullmatch(pattern, refused), refused
