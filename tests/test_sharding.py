"""Mesh construction (comet_jax/parallel/sharding.make_mesh): shapes on fake CPU devices, and
the physical placement on real TPU topology descriptions (libtpu, requirements-dev.txt)."""

import importlib.util

import jax
import numpy as np
import pytest

from comet_jax.parallel import sharding

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (requirements-dev.txt) is not installed")


def test_cpu_mesh_has_the_requested_shape_in_device_order():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2, stage=1)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "stage": 1}
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


def test_mesh_errors_name_the_product_and_the_slices():
    with pytest.raises(ValueError, match=r"data\*fsdp\*tensor\*stage = 1\*3\*1\*1 = 3 but 8 devices"):
        sharding.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="multiple of mesh.slices"):
        sharding.make_mesh(data=1, fsdp=8, slices=2)
    with pytest.raises(ValueError, match="from 1 slice"):
        sharding.make_mesh(data=2, fsdp=4, slices=2)


def _hops(a, b) -> int:
    return int(np.abs(np.asarray(a.coords) - np.asarray(b.coords)).sum())


@needs_libtpu
def test_tpu_mesh_puts_the_inner_axes_on_physical_neighbours():
    from comet_jax import aot

    devices = aot.tpu_devices("v5e:4x4")
    rng = np.random.default_rng(0)
    shuffled = [devices[i] for i in rng.permutation(len(devices))]  # list order must not matter
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=4, stage=1, devices=shuffled)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 4, "stage": 1}
    grid = mesh.devices[0, :, :, 0]
    for row in grid:  # each tensor group is a line of 4 neighbouring chips
        assert all(_hops(a, b) == 1 for a, b in zip(row, row[1:]))
    plain = np.asarray(shuffled).reshape(4, 4)  # what reshaping the list would have given
    assert not all(_hops(a, b) == 1 for row in plain for a, b in zip(row, row[1:]))


@needs_libtpu
def test_multi_slice_mesh_keeps_each_slice_inside_one_data_group():
    from comet_jax import aot

    devices = aot.tpu_devices("v5e:2x2", slices=2)
    assert {d.slice_index for d in devices} == {0, 1}
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2, stage=1, devices=devices, slices=2)
    for i in range(2):  # data index i = slice i: fsdp x tensor never cross the DCN
        assert {d.slice_index for d in mesh.devices[i].flat} == {i}
