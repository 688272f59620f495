"""Mesh construction and sharding rules on 8 host CPU devices."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxdistill import parallel


def test_minus_one_fills_the_devices():
    mesh = parallel.make_mesh((-1, 2), ("data", "model"))
    assert dict(mesh.shape) == {"data": 4, "model": 2}


@pytest.mark.parametrize("shape, axes, message", [
    ((3, -1), ("data", "model"), "does not divide 8 devices"),
    ((2, 2), ("data", "model"), "uses 4 of 8 devices"),
    ((-1,), ("data",), "must include 'data' and a tensor axis"),
    ((2, 2, 2), ("data", "tensor", "pipeline"), "nothing else"),
    ((-1, -1), ("data", "model"), "at most one -1"),
])
def test_bad_meshes(shape, axes, message):
    with pytest.raises(ValueError, match=message):
        parallel.make_mesh(shape, axes)


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
    with pytest.raises(ValueError, match="sharding rule 'zero'"):
        parallel.tree_shardings(tree, mesh, "zero")


def test_three_axes_fsdp_and_tensor():
    mesh = parallel.make_mesh((2, 2, -1), ("data", "fsdp", "tensor"))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert parallel.batch_shards(mesh) == 4
    tree = {"kernel": jax.ShapeDtypeStruct((6, 16), "float32")}
    assert parallel.tree_shardings(tree, mesh, "fsdp")["kernel"].spec == P(None, "fsdp")
    assert parallel.tree_shardings(tree, mesh, "tensor")["kernel"].spec == P(None, "tensor")
