"""Devices and dtypes: resolving ``--device``/``--dtype``, and TF32 off while estimating.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from genentropy_cli.defaults import DEFAULT_DEVICE, DEFAULT_DTYPE, SUPPORTED_DTYPES
from genentropy_cli.errors import InputError

__all__ = ["resolve_device", "resolve_dtype", "strict_float32", "tf32_enabled"]


def resolve_device(name: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str | torch.dtype = DEFAULT_DTYPE) -> torch.dtype:
    """The decoder's compute dtype; Gram matrices and statistics are float64 regardless."""
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    text = str(name).strip().lower()
    if text not in SUPPORTED_DTYPES:
        raise InputError(f"unsupported dtype {name!r}; choose one of {', '.join(SUPPORTED_DTYPES)}")
    return getattr(torch, text)


def _tf32_switches() -> list[tuple[object, str]]:
    """(backend, attribute) pairs that control TF32: the fp32_precision API where this torch
    has it (mixing it with the legacy allow_tf32 flags raises), else the legacy flags."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision"),
                (torch.backends.cudnn.rnn, "fp32_precision")]
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]


@contextmanager
def strict_float32() -> Iterator[None]:
    """Switch TF32 off (matmul and cuDNN) for the estimate, then restore the user's settings.

    TF32 convolutions and matmuls keep 10 mantissa bits, which ruins Jacobians at small s.
    """
    switches = _tf32_switches()
    saved = [getattr(backend, name) for backend, name in switches]
    for backend, name in switches:
        setattr(backend, name, "ieee" if name == "fp32_precision" else False)
    try:
        yield
    finally:
        for (backend, name), value in zip(switches, saved):
            setattr(backend, name, value)


def tf32_enabled() -> bool:
    """Whether TF32 is allowed for CUDA matmuls or cuDNN convolutions right now."""
    return any(getattr(backend, name) in (True, "tf32") for backend, name in _tf32_switches())
