"""On-policy / generalised knowledge distillation of a decoder LM (GKD: Agarwal et al.,
"On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024).

With probability ``config.onpolicy.lambda_`` a train batch's completions are replaced, inside
the jitted train step, by completions the CURRENT student samples for the batch's prompts
(``generate.sample``: KV cache, one ``while_loop``), keyed by ``fold_in(fold_in(state.rng,
step), ROLLOUT)``, so a step's samples are a pure function of the state and the batch (a resumed
run samples what an uninterrupted one does). The teacher then scores every position of the
new batch in the same step and the objective's terms (fkl, rkl, jsd with its beta, ...) are
reduced over the sampled completion tokens alone. ``lambda_ = 0`` is supervised KD on the
dataset's completions; ``lambda_ = 1`` trains on student samples only.

Batches are the one-function-per-window rows of ``pystdlib_function_rows``
(``data.prompt_rows``), or the teacher's completions of them (``seqkd``): row b's prompt is
its tokens before the first weighted target, at most ``prompt_budget(L)`` tokens, and the
sampler continues it up to the window's end ``L`` (or its end-of-text token).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxdistill import generate
from jaxdistill.data.prompt_rows import prompt_budget

ROLLOUT = 0x6B64  # folded into a step's key: the sampler's key, apart from the step's others
ROW_DATASETS = ("pystdlib_function_rows", "seqkd_completions")  # prompt/completion rows


@dataclasses.dataclass(frozen=True)
class Sampling:
    """``generate.sample``'s settings (see ``generate.filter_logits``)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False


def sampling_from_config(cfg, field: str) -> Sampling:
    """The ``Sampling`` of a config section with those four fields, checked (``field`` names
    the section in errors)."""
    s = Sampling(float(cfg.temperature), int(cfg.top_k), float(cfg.top_p), bool(cfg.greedy))
    if not s.temperature > 0:
        raise ValueError(f"{field}.temperature must be > 0 (or set {field}.greedy=True), got "
                         f"{cfg.temperature}")
    if s.top_k < 0:
        raise ValueError(f"{field}.top_k must be >= 0 (0: no limit), got {cfg.top_k}")
    if not 0 < s.top_p <= 1:
        raise ValueError(f"{field}.top_p must be in (0, 1] (1: off), got {cfg.top_p}")
    return s


def prompt_lengths(weights: jax.Array) -> jax.Array:
    """int32 [B]: each row's prompt length, the tokens before its first weighted target."""
    return (jnp.argmax(weights > 0, axis=1) + 1).astype(jnp.int32)


def rollout(graphdef, params, batch, rng, sampling: Sampling, *, eos_id: int,
            pad_id: int) -> generate.Sample:
    """Completions of the batch's prompts by the model ``(graphdef, params)``, each row
    continued to the window's end: a ``generate.Sample`` of [B, L] (L = the batch's length)."""
    length = batch["inputs"].shape[1]
    budget = prompt_budget(length)
    return generate.sample(graphdef, params, batch["inputs"][:, :budget],
                           prompt_lengths(batch["weights"]), max_new_tokens=length - budget,
                           rng=rng, eos_id=eos_id, pad_id=pad_id,
                           **dataclasses.asdict(sampling))


def completion_batch(batch: dict, sample: generate.Sample) -> dict:
    """``batch`` with its token fields rebuilt from ``sample``: inputs the sampled rows,
    targets their next tokens, weights 1 exactly on generated targets, segment 1 and
    positions 0, 1, ... on the rows' tokens (prompt and generated); other fields kept."""
    tokens, generated = sample.tokens, sample.generated

    def shift(x):  # position t holds x[t + 1]; the last position nothing
        return jnp.pad(x[:, 1:], ((0, 0), (0, 1)))
    real = (generated | (jnp.arange(tokens.shape[1])[None] < prompt_lengths(batch["weights"])
                         [:, None])).astype(jnp.int32)
    return {**batch, "inputs": tokens, "targets": shift(tokens),
            "weights": shift(generated).astype(jnp.float32), "segment_ids": real,
            "positions": real * jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]}


@dataclasses.dataclass(frozen=True)
class OnPolicy:
    """The static on-policy settings of a train step (``StepContext.onpolicy``)."""

    lambda_: float
    sampling: Sampling
    eos_id: int
    pad_id: int

    def batch(self, student_def, state, batch) -> tuple[dict, dict]:
        """(the step's batch: with probability ``lambda_`` the student's completions of its
        prompts, else unchanged; metrics: ``onpolicy`` 1.0 when sampled)."""
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), ROLLOUT)
        coin_key, sample_key = jax.random.split(key)

        def sampled(batch):
            out = rollout(student_def, jax.lax.stop_gradient(state.params["student"]), batch,
                          sample_key, self.sampling, eos_id=self.eos_id, pad_id=self.pad_id)
            return completion_batch(batch, out)

        if self.lambda_ >= 1.0:
            return sampled(batch), {"onpolicy": jnp.float32(1.0)}
        on = jax.random.bernoulli(coin_key, self.lambda_)
        return (jax.lax.cond(on, sampled, lambda b: dict(b), batch),
                {"onpolicy": on.astype(jnp.float32)})


def from_config(config, info, *, store: bool, teacher_devices: int) -> OnPolicy | None:
    """The run's ``OnPolicy`` (None when ``config.onpolicy.lambda_`` is 0), checked against
    the task, the dataset and the teacher before anything compiles (a config written
    before these fields existed has none)."""
    if "onpolicy" not in config:
        return None
    lam = config.onpolicy.lambda_
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
        raise ValueError(f"config.onpolicy.lambda_ must be a probability in [0, 1], got {lam!r}")
    sampling = sampling_from_config(config.onpolicy, "config.onpolicy")
    if lam == 0:
        return None
    if config.task != "causal_lm":
        raise ValueError(f"config.onpolicy.lambda_={lam} needs config.task='causal_lm', got "
                         f"{config.task!r}")
    if info.name not in ROW_DATASETS:
        raise ValueError(f"config.onpolicy.lambda_={lam} samples completions of prompts: set "
                         f"config.data.name to one of {list(ROW_DATASETS[:1])} (one prompt per "
                         f"row), not {info.name!r}")
    if not config.teacher.model or store:
        raise ValueError(f"config.onpolicy.lambda_={lam}: the teacher scores the student's "
                         "samples, so it must run online (a config.teacher.model, no "
                         "config.teacher.store)")
    if config.get("population", {}).get("size", 0):
        raise ValueError(f"config.onpolicy.lambda_={lam} samples from one student; a "
                         "population (config.population.size > 0) trains on the dataset: set "
                         "config.onpolicy.lambda_=0 or config.population.size=0")
    if teacher_devices:
        raise ValueError(f"config.onpolicy.lambda_={lam} samples inside the one-program step; "
                         "set config.mesh.teacher_devices=0")
    return OnPolicy(float(lam), sampling, int(info.metadata["eot_id"]),
                    int(info.metadata["pad_id"]))
