"""A stand-in CUDA device for machines without a GPU: tensors "on cuda" are CPU tensors that say they
are on ``cuda:0``, and every torch call checks the device rules a real GPU enforces.

What it catches: operations that mix CPU and CUDA tensors (``cpu_table[cuda_idx]``, ``torch.cat`` of
both, binary ops), ``.numpy()`` / ``np.asarray`` of a CUDA tensor, and a CUDA tensor's ``data_ptr``
reaching a CPU kernel; code that asks ``t.device`` / ``t.is_cuda`` takes its GPU branch. What it
cannot catch: CUDA kernels' own limits (dtypes, memory) and numerical differences. It is a check of
device handling, not a substitute for running on a GPU (tests/index/test_gpu.py does that).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_MARK = "_tessera_fake_cuda"


class DeviceMixError(RuntimeError):
    pass


def on_cuda(t: object) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _MARK, False)


def _mark(out, value: bool = True):
    def one(x):
        if isinstance(x, torch.Tensor):
            setattr(x, _MARK, value)
        return x

    return tree_map(one, out)


def _is_cuda(device) -> bool:
    if isinstance(device, torch.Tensor):
        return on_cuda(device)
    if isinstance(device, (str, torch.device)):
        return torch.device(device).type == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # .to(0): a CUDA ordinal


def _target(args, kwargs):
    """The device a ``.to(...)`` call asks for: (found, is_cuda)."""
    if "device" in kwargs and kwargs["device"] is not None:
        return True, _is_cuda(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, (str, torch.device, torch.Tensor)) or (isinstance(a, int) and not isinstance(a, bool)):
            return True, _is_cuda(a)
    return False, False


def _to_cpu_args(args, kwargs):
    kwargs = dict(kwargs)
    if "device" in kwargs and kwargs["device"] is not None:
        kwargs["device"] = "cpu"
    args = tuple(
        "cpu" if i and (isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)))
        else a
        for i, a in enumerate(args)
    )
    return args, kwargs


_T = torch.Tensor
_TO_CALLS = {_T.to, _T.cuda, _T.cpu}
_CROSS_OK = {_T.copy_, _T.__setitem__, _T.__repr__, _T.__format__, _T.__str__, torch._has_compatible_shallow_copy_type}
_INDEXING = {_T.__getitem__, _T.__setitem__}


def _caller_module() -> str:
    """Module of the code that made the torch call being handled."""
    frame = sys._getframe(2)  # 0: here, 1: __torch_function__, 2: the call site
    return frame.f_globals.get("__name__", "")


class FakeCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func == _T.device.__get__:
            return CUDA if on_cuda(args[0]) else func(*args)  # the real one: cpu, or meta while loading
        if func == _T.is_cuda.__get__:
            return on_cuda(args[0])
        if func is _T.get_device:
            return 0 if on_cuda(args[0]) else func(*args, **kwargs)
        if func in (_T.numpy, _T.__array__) and on_cuda(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")
        if func is _T.data_ptr and on_cuda(args[0]) and _caller_module().startswith("tessera."):
            # Tessera takes addresses only for its compiled CPU kernel (libraries compare them: allowed)
            raise DeviceMixError("data_ptr() of a CUDA tensor taken for the CPU kernel")
        if func == _T.data.__set__:  # param.data = moved (how Module.to moves parameters)
            func(*args, **kwargs)
            setattr(args[0], _MARK, on_cuda(args[1]))
            return None
        if func is _T.pin_memory:
            return args[0]
        if func in _TO_CALLS:
            return self._to(func, args, kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        cuda_in = any(on_cuda(t) for t in tensors)
        if func in _INDEXING:
            self._check_indexing(func, args)
        elif func not in _CROSS_OK and cuda_in:
            cpu = [t for t in tensors if not on_cuda(t) and t.dim() > 0]
            if cpu:
                raise DeviceMixError(
                    f"{name}: expected all tensors on the same device, got cuda:0 and cpu "
                    f"(cpu shapes {[tuple(t.shape) for t in cpu]})"
                )
        want_cuda = "device" in kwargs and kwargs["device"] is not None and _is_cuda(kwargs["device"])
        if want_cuda:
            kwargs = {**kwargs, "device": "cpu"}
        out = func(*args, **kwargs)
        if func in _INDEXING and not on_cuda(args[0]):
            return out
        if want_cuda or cuda_in:
            if func in (_T.__setitem__, _T.copy_):
                return out
            return _mark(out)
        return out

    @staticmethod
    def _check_indexing(func, args):
        """A CUDA tensor may be indexed by CPU or CUDA indices; a CPU tensor only by CPU ones."""
        target, index = args[0], args[1]
        if on_cuda(target):
            return
        flat = [t for t in tree_flatten(index)[0] if isinstance(t, torch.Tensor)]
        if any(on_cuda(t) for t in flat):
            raise DeviceMixError(f"{func.__name__}: a CPU tensor indexed with CUDA indices")
        if func is _T.__setitem__ and on_cuda(args[2]) and args[2].dim() > 0:
            raise DeviceMixError("__setitem__: CUDA values written into a CPU tensor by index")

    @staticmethod
    def _to(func, args, kwargs):
        """``.cuda()`` / ``.cpu()`` / ``.to(...)``: the CPU copy or cast, marked for the device asked for."""
        src = args[0]
        if func is _T.cuda:
            return _mark(src.clone(), True)
        if func is _T.cpu:
            return _mark(src.clone(), False) if on_cuda(src) else src
        found, cuda = _target(args, kwargs)
        other = next((a for a in (*args[1:], kwargs.get("device")) if isinstance(a, torch.Tensor)), None)
        if other is not None:  # .to(other): the device and dtype of ``other``
            args, kwargs = (src, other.dtype), {k: v for k, v in kwargs.items() if k != "device"}
        else:
            args, kwargs = _to_cpu_args(args, kwargs)
        out = _T.to(*args, **kwargs)
        if not found:  # a dtype change stays where it is
            cuda = on_cuda(src)
        if out is src:
            if on_cuda(src) == cuda:
                return out
            out = src.clone()  # a real move makes a copy
        return _mark(out, cuda)


@contextlib.contextmanager
def fake_cuda(monkeypatch) -> Iterator[None]:
    """Within this context, ``device="cuda"`` works on a CPU-only machine under the checks above."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.get_rng_state()])  # one generator
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: torch.set_rng_state(states[0]))
    run = threading.Thread.run

    def run_under_fake_cuda(self):  # torch function modes are per thread: threads started here get one
        with FakeCuda():
            run(self)

    monkeypatch.setattr(threading.Thread, "run", run_under_fake_cuda)
    with FakeCuda():
        yield
