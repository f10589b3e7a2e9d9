"""fnlearn.tensors: NumPy views, devices and DLPack exchange with PyTorch."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnlearn.tensors import from_torch, list_devices, shares_memory, to_device, to_numpy, to_torch

ON_CPU = jax.default_backend() == "cpu"


def test_to_numpy_round_trip_keeps_values_and_dtype():
    x = jnp.array([1, 2, 3])
    array = to_numpy(x)
    assert isinstance(array, np.ndarray)
    np.testing.assert_array_equal(array, [1, 2, 3])
    assert array.dtype == np.int32 and str(array) == "[1 2 3]"
    np.testing.assert_array_equal(jnp.asarray(array), x)


@pytest.mark.skipif(not ON_CPU, reason="zero-copy views exist only on the CPU backend")
def test_numpy_view_shares_memory_on_cpu_and_is_read_only():
    x = jnp.arange(6.0)
    view = to_numpy(x)
    assert shares_memory(view, x)
    assert shares_memory(view[3:], x)
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1.0


def test_copies_do_not_share_memory():
    x = jnp.arange(6.0)
    assert not shares_memory(np.array(x), x)
    assert not shares_memory(to_numpy(jnp.arange(6.0)), x)


def test_shares_memory_rejects_wrong_types():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        shares_memory([1, 2], jnp.ones(2))
    with pytest.raises(TypeError, match="single device"):
        shares_memory(np.ones(2), np.ones(2))


def test_to_numpy_refuses_traced_values():
    with pytest.raises(TypeError, match="traced value"):
        jax.jit(to_numpy)(jnp.ones(2))


def test_list_devices_includes_the_cpu():
    devices = list_devices()
    assert devices[0] == jax.devices()[0]
    assert any(d.platform == "cpu" for d in devices)


def test_to_device_by_name_and_by_device():
    x = np.arange(3.0)
    on_cpu = to_device(x, "cpu")
    assert on_cpu.devices() == {jax.devices("cpu")[0]}
    assert to_device({"w": x}, jax.devices()[0])["w"].devices() == {jax.devices()[0]}
    np.testing.assert_array_equal(on_cpu, x)


def test_to_device_rejects_unknown_devices():
    with pytest.raises(ValueError, match="does not exist"):
        to_device(np.ones(2), f"cpu:{len(jax.devices('cpu'))}")
    with pytest.raises(ValueError, match="no 'nosuch' backend"):
        to_device(np.ones(2), "nosuch")


def test_dlpack_to_torch_and_back_is_zero_copy(need):
    torch = need("torch")
    x = to_device(jnp.array([1.0, 2.0, 3.0]), "cpu")
    tensor = to_torch(x)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.tolist() == [1.0, 2.0, 3.0] and tensor.dtype == torch.float32
    assert tensor.data_ptr() == x.unsafe_buffer_pointer()
    back = from_torch(tensor)
    np.testing.assert_array_equal(back, x)
    assert back.unsafe_buffer_pointer() == x.unsafe_buffer_pointer()


def test_from_torch_takes_torch_tensors_and_refuses_grad_tensors(need):
    torch = need("torch")
    np.testing.assert_array_equal(from_torch(torch.arange(4)), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="detach"):
        from_torch(torch.ones(2, requires_grad=True))


def test_missing_torch_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        to_torch(jnp.ones(2))
