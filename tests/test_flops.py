"""The matmul + convolution FLOP count against hand and brute-force counts, and against XLA's
own count on the CPU backend (which counts everything)."""

import itertools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxdistill.flops import dot_conv_flops, program_flops, xla_flops
from jaxdistill.models import build_model
from jaxdistill.run_setup import model_cost


def _conv(stride, padding, lhs_dilation, rhs_dilation):
    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, stride, padding, lhs_dilation=lhs_dilation,
                                            rhs_dilation=rhs_dilation,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv


def _brute_force_macs(x_shape, k_shape, out_shape, stride, pads, lhs_dil, rhs_dil):
    """Multiply-adds that read an input element, by enumerating every (output, tap) pair."""
    (b, h, w, c), (kh, kw, _, f) = x_shape, k_shape
    valid = 0
    for oh, ow, th, tw in itertools.product(range(out_shape[1]), range(out_shape[2]),
                                            range(kh), range(kw)):
        ih = oh * stride[0] - pads[0][0] + th * rhs_dil[0]
        iw = ow * stride[1] - pads[1][0] + tw * rhs_dil[1]
        on_h = 0 <= ih <= (h - 1) * lhs_dil[0] and ih % lhs_dil[0] == 0
        on_w = 0 <= iw <= (w - 1) * lhs_dil[1] and iw % lhs_dil[1] == 0
        valid += on_h and on_w
    return b * f * c * valid


def test_dot_general_is_two_flops_per_multiply_add():
    x, w = jnp.ones((2, 4, 3)), jnp.ones((3, 5))
    assert dot_conv_flops(lambda x, w: jnp.einsum("bti,ij->btj", x, w), x, w) == 2 * 2 * 4 * 3 * 5
    a, b = jnp.ones((6, 4, 3)), jnp.ones((6, 3, 7))  # batched matmul
    assert dot_conv_flops(jnp.matmul, a, b) == 2 * 6 * 4 * 3 * 7


@pytest.mark.parametrize("stride,padding,lhs_dil,rhs_dil", [
    ((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),      # SAME 3x3
    ((2, 2), ((0, 0), (0, 0)), (1, 1), (1, 1)),      # VALID, strided
    ((2, 1), ((1, 2), (0, 1)), (2, 1), (1, 2)),      # asymmetric padding, both dilations
])
def test_convolution_counts_taps_on_the_input_only(stride, padding, lhs_dil, rhs_dil):
    x, k = jnp.ones((2, 9, 8, 3)), jnp.ones((3, 3, 3, 16))
    conv = _conv(stride, padding, lhs_dil, rhs_dil)
    out = jax.eval_shape(conv, x, k).shape
    macs = _brute_force_macs(x.shape, k.shape, out, stride, padding, lhs_dil, rhs_dil)
    assert dot_conv_flops(conv, x, k) == 2 * macs
    assert xla_flops(jax.jit(conv).lower(x, k).compile()) == 2 * macs  # XLA's convention too
    # training: the input and kernel gradients are convolutions over the same (output, tap) pairs
    loss = jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))
    assert dot_conv_flops(loss, x, k) == 3 * 2 * macs


def test_scan_and_cond_bodies():
    x, w = jnp.ones((4, 3)), jnp.ones((3, 3))
    one = 2 * 4 * 3 * 3

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
    assert dot_conv_flops(scanned, x, w) == 5 * one

    def branches(p, x, w):  # the costliest branch: two matmuls
        return jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)
    assert dot_conv_flops(branches, True, x, w) == 2 * one
    assert dot_conv_flops(jax.jit(lambda x, w: x @ w), x, w) == one  # inside a jit


def test_shard_map_body_counts_once_per_shard():
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    x, w = jnp.ones((16, 3)), jnp.ones((3, 5))
    sharded = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("d"), P()),
                            out_specs=P("d"))
    assert dot_conv_flops(sharded, x, w) == dot_conv_flops(jnp.matmul, x, w) == 2 * 16 * 3 * 5


def test_program_flops_takes_xla_unless_it_is_incomplete():
    x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    compiled = jax.jit(lambda x, w: jax.nn.relu(x @ w)).lower(x, w).compile()
    counted = dot_conv_flops(lambda x, w: x @ w, x, w)
    xla = xla_flops(compiled)
    assert xla >= counted  # the matmul and the relu
    assert program_flops(compiled, counted) == (xla, "compiled")
    assert program_flops(compiled, counted, devices=4) == (4 * xla, "compiled")
    # a backend that counted under 90% of the matmuls (GPU library calls): the count wins
    assert program_flops(compiled, 2 * xla) == (2 * xla, "dot_conv")


@pytest.mark.parametrize("name", ["resnet8x4", "vit_tiny"])
def test_models_xla_count_is_complete_on_cpu(name):
    """On CPU XLA counts every op: at least the matmuls and convolutions, and not much more."""
    model = build_model(name, num_classes=100, input_shape=(32, 32, 3), rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    variables = {"params": params, "batch_stats": stats}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)

    def forward(v, x):
        return nnx.merge(graphdef, v["params"], v["batch_stats"])(x, train=False)[0]
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    counted = dot_conv_flops(forward, abstract, image)
    xla = xla_flops(jax.jit(forward).lower(abstract, image).compile())
    assert counted <= xla < 1.1 * counted  # XLA's own count, not the fallback
    assert model_cost(graphdef, abstract, (32, 32, 3))[1] == xla


def test_mlp_student_forward_flops():
    model = build_model("mlp_student", num_classes=10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            {"params": params, "batch_stats": stats})
    _, flops = model_cost(graphdef, abstract, (28, 28, 1))
    matmuls = 2 * (784 * 800 + 800 * 800 + 800 * 10)
    assert matmuls <= flops < matmuls * 1.01  # plus biases and ReLUs
