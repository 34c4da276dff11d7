"""Mixed precision for the trainer: bfloat16 autocast, or float16 autocast with dynamic loss scaling, and gradient
penalties that stay correct under that scaling.

float16's 5-bit exponent flushes small gradients to zero, so with `train.amp_dtype: float16` the backward runs on the
loss times a scale S and the gradients are divided by S before the optimiser steps (torch.amp.GradScaler: S halves
after an overflow and doubles after 2000 clean steps; a step whose gradients overflowed is skipped). bfloat16 has
float32's exponent range and needs none of this.

A gradient penalty (R1, path length) takes an inner `autograd.grad` of its own, which the loss scale does not reach,
so its float16 input gradients would underflow. `penalty_grad` follows PyTorch's AMP gradient-penalty recipe: it
scales the output by S before `autograd.grad` and multiplies the gradient by 1/S after. The trainer makes S visible
through a context variable (`Precision.autocast`), so the task losses that call `penalty_grad` take no scaler
argument; outside that context (float32, bfloat16, tests, other callers) it is plain `autograd.grad`.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

AMP_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# A non-finite loss now and then is expected under float16 loss scaling (the scale grows until something overflows);
# this many in a row is a real divergence.
MAX_SKIPPED_UPDATES = 20

_penalty_scale: ContextVar[Tensor | None] = ContextVar("penalty_scale", default=None)


def amp_supported(device: torch.device) -> bool:
    """bfloat16 autocast pays off on CUDA and on CPUs with AVX-512 BF16 / AMX (elsewhere it is emulated, slower)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


@contextmanager
def penalty_scale(scale: Tensor | None) -> Iterator[None]:
    """Inside the block `penalty_grad` scales its backward by `scale` (a 0-d tensor; None: no scaling)."""
    token = _penalty_scale.set(scale)
    try:
        yield
    finally:
        _penalty_scale.reset(token)


def penalty_grad(output: Tensor, inputs: Tensor) -> Tensor:
    """d output.sum() / d inputs, with the graph kept for the penalty's own backward (create_graph=True).

    Under a loss scale S (see `penalty_scale`) the backward runs on S * output.sum() and the gradient is multiplied
    by 1/S, so float16 input gradients do not underflow; S is a power of two, so this changes no float32 value. An
    overflow shows as an inf penalty, which the trainer treats as a skipped update. Without a scale this is exactly
    `torch.autograd.grad(output.sum(), inputs, create_graph=True)`."""
    scale = _penalty_scale.get()
    if scale is None:
        (grad,) = torch.autograd.grad(output.sum(), inputs, create_graph=True)
        return grad
    (grad,) = torch.autograd.grad(output.sum() * scale, inputs, create_graph=True)
    return grad * scale.reciprocal()


class Precision:
    """The run's autocast and, for float16, its GradScaler and how many updates of each net were skipped in a row.

    amp off: float32. bfloat16: autocast where `amp_supported` (float32 elsewhere, with a note), no scaler. float16:
    autocast on any device with a GradScaler; meant for CUDA, allowed on the CPU (slow) so that it can be tested."""

    def __init__(self, device: torch.device, amp: bool, amp_dtype: str, announce: bool = True):
        self.device = device
        self.dtype: torch.dtype | None = None
        if amp and amp_dtype == "float16":
            self.dtype = torch.float16
            if device.type == "cpu" and announce:
                print("note: --amp-dtype float16 on the CPU is slow and meant for testing (it is for CUDA)",
                      file=sys.stderr)
        elif amp and amp_supported(device):
            self.dtype = AMP_DTYPES[amp_dtype]
        elif amp and announce:
            print(f"note: --amp: {device} has no bfloat16 instructions; training in float32", file=sys.stderr)
        # GradScaler's default first scale, 2**16, is above float16's largest value (65504): the gradient of a
        # penalty's output.sum() is the scale itself, so every run with R1 would skip its first update
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**15) if self.dtype == torch.float16 else None
        self.max_skipped = MAX_SKIPPED_UPDATES
        # per net: its updates skipped in a row for a non-finite loss (per net, not per update, so that a critic
        # that keeps diverging is caught even though the generator's updates in between succeed)
        self.skipped: dict[str, int] = {}
        # per net: its updates in a row that GradScaler skipped because the gradients overflowed (the loss being
        # finite); 0-d counters on the device, read on logging iterations only (`overflowing_nets`)
        self.overflows: dict[str, Tensor] = {}
        self._one = torch.ones((), device=device)

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the run's dtype (nothing in float32); under loss scaling `penalty_grad` sees the scale."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype), penalty_scale(self.scale()):
            yield

    def scale(self) -> Tensor | None:
        """The current loss scale as a 0-d tensor on the device (no host sync), or None without a scaler."""
        # GradScaler exposes its scale only as a Python float (a sync); scaling a 1 gives the tensor
        return None if self.scaler is None else self.scaler.scale(self._one)

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        """Steps the optimisers (keyed by net name); under loss scaling each unscales its gradients first and skips
        its step when they are not finite, and the scale is updated once for the whole group."""
        if self.scaler is None:
            for opt in optimizers.values():
                opt.step()
            return
        before = self.scale()
        for name, opt in optimizers.items():
            self.scaler.step(opt)
            self.skipped.pop(name, None)
        self.scaler.update()
        overflowed = self.scale() < before  # the scale backs off exactly when some gradient was not finite
        for name in optimizers:
            count = self.overflows.get(name, torch.zeros((), dtype=torch.int64, device=self.device))
            self.overflows[name] = torch.where(overflowed, count + 1, 0)

    def overflowing_nets(self) -> dict[str, int]:
        """The nets whose last `max_skipped` or more updates in a row were skipped for overflowing gradients, with
        their counts (one host sync)."""
        if not self.overflows:
            return {}
        counts = torch.stack(list(self.overflows.values())).tolist()
        return {name: n for name, n in zip(self.overflows, counts) if n >= self.max_skipped}

    def skip_update(self, names: Iterable[str]) -> bool:
        """A loss of the nets `names` was not finite. Under loss scaling: halves the scale and returns True (the
        caller skips the update) unless one of them had `max_skipped` updates in a row skipped already. False without
        a scaler or then: the caller stops the run."""
        if self.scaler is None or any(self.skipped.get(name, 0) >= self.max_skipped for name in names):
            return False
        self.scaler.update(self.scale() * self.scaler.get_backoff_factor())
        # as GradScaler does when it skips a step itself: the growth interval counts again from this skip (its public
        # state API; this path is rare and has synced on the loss already)
        state = self.scaler.state_dict()
        self.scaler.load_state_dict({**state, "_growth_tracker": 0})
        for name in names:
            self.skipped[name] = self.skipped.get(name, 0) + 1
        return True

    def state_dict(self) -> dict:
        if self.scaler is None:
            return {}
        return {"scaler": self.scaler.state_dict(), "skipped": dict(self.skipped),
                "overflows": {name: int(n) for name, n in self.overflows.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restores a float16 run's scaler; a checkpoint without one (older, or float32 / bfloat16) keeps the fresh
        scaler, and a scaler state is ignored by a run without loss scaling."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state["scaler"])
            self.skipped = dict(state["skipped"])
            self.overflows = {name: torch.tensor(n, dtype=torch.int64, device=self.device)
                              for name, n in state.get("overflows", {}).items()}
