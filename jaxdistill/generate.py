"""Sampling from a decoder LM with its KV cache, as one jitted program; and a CLI.

``sample`` prefills the cache with the prompts, then generates one token per step inside a
``jax.lax.while_loop`` (which stops early once every row has emitted ``eos_id``). Tokens are
drawn from the logits at ``temperature``, restricted to the ``top_k`` most likely tokens and to
the top-p nucleus (Holtzman et al., "The Curious Case of Neural Text Degeneration", ICLR 2020),
or taken by argmax with ``greedy``.

CLI, on a run's workdir (its ``config.json`` and checkpoints)::

    python -m jaxdistill.generate --workdir=DIR --prompt='def ' [--role=student|teacher] \\
        [--max_new_tokens=64 --temperature=0.8 --top_k=40 --top_p=0.95 --greedy --seed=0]
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from flax import nnx
from tokenizers import Tokenizer

from jaxdistill import data
from jaxdistill.checkpoint import load_teacher
from jaxdistill.data.tokenizer import EOT
from jaxdistill.models import build_model
from jaxdistill.models.registry import kind_phrase, model_kind

F32 = jnp.float32


class Sample(NamedTuple):
    """``sample``'s result, each ``[B, P + max_new_tokens]``, row ``b`` laid out as its
    ``prompt_lengths[b]`` prompt tokens, then its generated tokens, then ``pad_id``.

    tokens: int32 tokens. logprobs: float32 log-probability of each generated token under the
    model itself (temperature 1, unfiltered), 0 elsewhere. generated: True exactly where a token
    was generated (an emitted ``eos_id`` included, the padding after it not).
    """

    tokens: jax.Array
    logprobs: jax.Array
    generated: jax.Array


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """float32 ``logits / temperature`` [..., V] with ``-inf`` outside the ``top_k`` largest
    (0: no limit) and outside the nucleus: the most likely tokens, in order, up to the first
    whose cumulative probability reaches ``top_p`` (the smallest such set; 1.0: no limit)."""
    logits = logits.astype(F32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p
        keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "greedy", "eos_id", "pad_id"))
def _sample(graphdef, params, prompt, prompt_lengths, rng, *, max_new_tokens, temperature,
            top_k, top_p, greedy, eos_id, pad_id) -> Sample:
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt.shape
    total = prompt_len + max_new_tokens
    rows = jnp.arange(batch)
    lengths = prompt_lengths.astype(jnp.int32)
    logits, cache = model.decode(prompt, model.init_cache(batch, total), 0)
    last = logits[rows, lengths - 1]
    in_prompt = jnp.arange(total)[None, :] < lengths[:, None]
    tokens = jnp.where(in_prompt, jnp.pad(prompt, ((0, 0), (0, max_new_tokens))), pad_id)
    out = Sample(tokens.astype(jnp.int32), jnp.zeros((batch, total), F32),
                 jnp.zeros((batch, total), bool))

    def emit(i, logits, out, done):
        """Chooses token i of every live row from its next-token ``logits`` [B, V]."""
        if greedy:
            token = jnp.argmax(logits, axis=-1)
        else:
            filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            token = jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(F32), axis=-1),
                                      token[:, None], axis=-1)[:, 0]
        live = ~done
        token = jnp.where(live, token, pad_id).astype(jnp.int32)
        at = lengths + i
        out = Sample(out.tokens.at[rows, at].set(token),
                     out.logprobs.at[rows, at].set(jnp.where(live, logprob, 0.0)),
                     out.generated.at[rows, at].set(live))
        if eos_id is not None:
            done = done | (token == eos_id)
        return token, out, done

    def body(carry):
        i, token, cache, out, done = carry
        logits, cache = model.decode(token[:, None], cache, lengths + i - 1)
        token, out, done = emit(i, logits[:, 0], out, done)
        return i + 1, token, cache, out, done

    def cond(carry):
        i, _, _, _, done = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    token, out, done = emit(0, last, out, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, out, done))[3]


def sample(graphdef: nnx.GraphDef, params: nnx.State, prompt: jax.Array,
           prompt_lengths: jax.Array, *, max_new_tokens: int, rng: jax.Array,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           eos_id: int | None = None, pad_id: int = 0) -> Sample:
    """Continues right-padded prompts with a decoder LM; see ``Sample`` for the layout.

    Args:
      graphdef, params: the model split as ``nnx.split(model, nnx.Param)``.
      prompt: int [B, P] prompts, right-padded: row b's prompt is ``prompt[b, :len_b]``.
      prompt_lengths: int [B], each ``len_b`` in [1, P].
      max_new_tokens: tokens generated per row; ``P + max_new_tokens`` must not exceed the
        model's max length.
      rng: key for sampling (unused with ``greedy``).
      temperature, top_k, top_p: see ``filter_logits``.
      greedy: argmax decoding instead of sampling.
      eos_id: a row that emits this token stops: ``pad_id`` follows it.

    One compiled program per (shapes, settings); callable inside an outer ``jax.jit``.
    """
    prompt, prompt_lengths = jnp.asarray(prompt, jnp.int32), jnp.asarray(prompt_lengths)
    if greedy:  # the sampling settings do not apply: one program for every greedy call
        temperature, top_k, top_p = 1.0, 0, 1.0
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or use greedy), got {temperature}")
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {top_k} and {top_p}")
    if prompt.ndim != 2 or prompt_lengths.shape != prompt.shape[:1]:
        raise ValueError(f"expected prompt [B, P] and prompt_lengths [B], got shapes "
                         f"{tuple(prompt.shape)} and {tuple(prompt_lengths.shape)}")
    return _sample(graphdef, params, prompt, prompt_lengths, rng,
                   max_new_tokens=max_new_tokens, temperature=float(temperature),
                   top_k=int(top_k), top_p=float(top_p), greedy=bool(greedy), eos_id=eos_id,
                   pad_id=int(pad_id))


# ---- The CLI ----

def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to ``<workdir>/config.json``."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except FileNotFoundError:
        raise ValueError(f"no {path}: --workdir must be the workdir of a training run") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def role_model(config: ml_collections.ConfigDict, role: str, workdir: str
               ) -> tuple[ml_collections.ConfigDict, str]:
    """(``config.<role>``, the checkpoint path of its params) for role student or teacher;
    refuses a role without a model or whose model is not a decoder."""
    role_cfg = config[role]
    if not role_cfg.model:
        raise ValueError(f"config.{role}.model is '' in {workdir}: that run has no {role}")
    if model_kind(role_cfg.model) != "decoder":
        raise ValueError(f"not an LM run: config.{role}.model is {role_cfg.model!r}, "
                         f"{kind_phrase(role_cfg.model)}; generation needs a decoder")
    if role == "student":
        return role_cfg, workdir
    return role_cfg, role_cfg.checkpoint or os.path.join(workdir, "teacher")


def load_lm(role_cfg: ml_collections.ConfigDict, checkpoint: str, info: Any
            ) -> tuple[nnx.GraphDef, nnx.State, int]:
    """(graphdef, params, max length) of ``role_cfg``'s model for the token dataset ``info``
    (its ``num_classes`` and ``seq_len``), the params restored onto the first device from the
    newest checkpoint under ``checkpoint`` (a run's workdir)."""
    abstract = nnx.eval_shape(lambda: build_model(
        role_cfg.model, num_classes=role_cfg.get("num_classes", 0) or info.num_classes,
        input_shape=(info.seq_len,), rngs=nnx.Rngs(0),
        dtype=jnp.dtype(role_cfg.get("dtype", "float32")), **dict(role_cfg.get("kwargs", {}))))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    placed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          {"params": params, "batch_stats": stats})
    return graphdef, load_teacher(checkpoint, placed)["params"], abstract.max_len


def encode_prompt(tokenizer: Tokenizer, text: str, max_len: int,
                  max_new_tokens: int) -> list[int]:
    """The prompt's token ids, checked to leave room for ``max_new_tokens`` in ``max_len``."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise ValueError("--prompt encodes to no tokens; give at least one character")
    if len(ids) >= max_len:
        raise ValueError(f"--prompt is {len(ids)} tokens; the model's max length {max_len} "
                         f"allows at most {max_len - 1}")
    if len(ids) + max_new_tokens > max_len:
        raise ValueError(f"--max_new_tokens={max_new_tokens}: the {len(ids)}-token prompt "
                         f"leaves room for at most {max_len - len(ids)} new tokens in the "
                         f"model's max length {max_len}")
    return ids


def generate_text(workdir: str, prompt: str, *, role: str = "student",
                  max_new_tokens: int = 64, seed: int = 0, **settings: Any) -> str:
    """The prompt and its continuation by a run's student or teacher, as text; ``settings``
    are ``sample``'s (temperature, top_k, top_p, greedy). Stops at the end-of-text token."""
    config = read_config(workdir)
    role_cfg, checkpoint = role_model(config, role, workdir)
    info = data.prepare_from_config(config.data)
    if not info.tokenizer:
        raise ValueError(f"config.data.name={config.data.name!r} is not a token dataset")
    graphdef, params, max_len = load_lm(role_cfg, checkpoint, info)
    tokenizer = data.load_tokenizer(info)  # checked against the dataset's sha256
    ids = encode_prompt(tokenizer, prompt, max_len, max_new_tokens)
    out = sample(graphdef, params, jnp.asarray([ids]), jnp.asarray([len(ids)]),
                 max_new_tokens=max_new_tokens, rng=jax.random.key(seed),
                 eos_id=tokenizer.token_to_id(EOT), **settings)
    new = [t for t, g in zip(out.tokens[0].tolist(), out.generated[0].tolist()) if g]
    return tokenizer.decode(ids + new, skip_special_tokens=True)


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of a training run (config.json, checkpoints).")
    flags.DEFINE_string("prompt", None, "Text to continue.")
    flags.DEFINE_enum("role", "student", ["student", "teacher"], "Which of the run's models.")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0: all.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1.0: off.")
    flags.DEFINE_bool("greedy", False, "Argmax decoding instead of sampling.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.mark_flags_as_required(["workdir", "prompt"])


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        print(generate_text(f.workdir, f.prompt, role=f.role, max_new_tokens=f.max_new_tokens,
                            seed=f.seed, temperature=f.temperature, top_k=f.top_k,
                            top_p=f.top_p, greedy=f.greedy))
    except ValueError as e:
        sys.exit(f"jaxdistill: error: {e}")


if __name__ == "__main__":  # flags only when run as a program: importers keep their own
    from jaxdistill.validate import flags_parser
    _define_flags()
    app.run(_main, flags_parser=flags_parser(config_flag=None))  # one-line flag errors
