"""Mesh construction and sharding rules on 8 host CPU devices."""

import jax
import pytest
from jax.sharding import PartitionSpec as P
from refusals import refusal

from jaxdistill import parallel


def test_minus_one_fills_the_devices():
    mesh = parallel.make_mesh((-1, 2), ("data", "model"))
    assert dict(mesh.shape) == {"data": 4, "model": 2}


BAD_MESHES = [
    ((3, -1), ("data", "model"), "config.mesh.shape (3, -1) does not divide 8 devices"),
    ((2, 2), ("data", "model"), "config.mesh.shape (2, 2) uses 4 of 8 devices; use -1 to fill"),
    ((-1,), ("data",), ("config.mesh.axes ('data',) must include 'data' and a tensor axis "
                        "(tensor or model)")),
    ((2, 2, 2), ("data", "tensor", "pipeline"), ("config.mesh.axes ('data', 'tensor', "
                                                 "'pipeline'): each of data, fsdp, tensor / "
                                                 "model at most once, nothing else")),
    ((-1, -1), ("data", "model"), "config.mesh.shape (-1, -1): at most one -1"),
]


@pytest.mark.parametrize("shape, axes, message", BAD_MESHES)
def test_bad_meshes(shape, axes, message):
    assert refusal(lambda: parallel.make_mesh(shape, axes)) == message


def test_rules():
    mesh = parallel.make_mesh((4, 2), ("data", "model"))
    tree = {"kernel": jax.ShapeDtypeStruct((6, 16), "float32"),
            "bias": jax.ShapeDtypeStruct((16,), "float32"),
            "odd": jax.ShapeDtypeStruct((3, 5), "float32")}
    fsdp = parallel.tree_shardings(tree, mesh, "fsdp")
    assert fsdp["kernel"].spec == P(None, "data")  # largest dimension that 4 divides
    assert fsdp["bias"].spec == P("data")
    assert fsdp["odd"].spec == P()
    tensor = parallel.tree_shardings(tree, mesh, "tensor")
    assert tensor["kernel"].spec == P(None, "model")
    assert tensor["bias"].spec == P()  # vectors stay replicated
    assert all(s.spec == P() for s in parallel.tree_shardings(tree, mesh, "replicated").values())
    assert refusal(lambda: parallel.tree_shardings(tree, mesh, "zero")) == (
        "sharding rule 'zero' is unknown; choose one of ('replicated', 'fsdp', 'tensor', "
        "'fsdp_tensor')")


def test_three_axes_fsdp_and_tensor():
    mesh = parallel.make_mesh((2, 2, -1), ("data", "fsdp", "tensor"))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert parallel.batch_shards(mesh) == 4
    tree = {"kernel": jax.ShapeDtypeStruct((6, 16), "float32")}
    assert parallel.tree_shardings(tree, mesh, "fsdp")["kernel"].spec == P(None, "fsdp")
    assert parallel.tree_shardings(tree, mesh, "tensor")["kernel"].spec == P(None, "tensor")
