"""Streaming state objects: typed, named, flattenable.

Each streaming block owns a small dataclass of tensors (``AttentionCache``, ``ConvCache``,
``Mamba2Cache`` …) whose first dimension is the batch of streams. The helpers here work on
any such dataclass, or on nested lists/dicts of them, so that the encoder's whole state can be

- flattened to ``{"blocks.0.attn.k": tensor, …}`` for ONNX inputs/outputs and back,
- sliced to a subset of streams (``select``) and written back (``scatter``), which is how
  streams of different lengths run batched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor


def flatten(state: Any, prefix: str = "") -> dict[str, Tensor]:
    """Nested dataclasses / lists / dicts of tensors -> ordered ``{dotted.name: tensor}``."""
    out: dict[str, Tensor] = {}
    if isinstance(state, Tensor):
        out[prefix] = state
    elif dataclasses.is_dataclass(state):
        for f in dataclasses.fields(state):
            out.update(flatten(getattr(state, f.name), f"{prefix}.{f.name}" if prefix else f.name))
    elif isinstance(state, (list, tuple)):
        for i, s in enumerate(state):
            out.update(flatten(s, f"{prefix}.{i}" if prefix else str(i)))
    elif isinstance(state, dict):
        for k, s in state.items():
            out.update(flatten(s, f"{prefix}.{k}" if prefix else str(k)))
    elif state is not None:
        raise TypeError(f"cannot flatten state of type {type(state).__name__} at '{prefix}'")
    return out


def unflatten(template: Any, tensors: dict[str, Tensor], prefix: str = "") -> Any:
    """Inverse of :func:`flatten`: rebuild the structure of ``template`` from named tensors."""
    if isinstance(template, Tensor):
        return tensors[prefix]
    if dataclasses.is_dataclass(template):
        kw = {
            f.name: unflatten(getattr(template, f.name), tensors, f"{prefix}.{f.name}" if prefix else f.name)
            for f in dataclasses.fields(template)
        }
        return type(template)(**kw)
    if isinstance(template, (list, tuple)):
        items = [unflatten(s, tensors, f"{prefix}.{i}" if prefix else str(i)) for i, s in enumerate(template)]
        return type(template)(items)
    if isinstance(template, dict):
        return {k: unflatten(s, tensors, f"{prefix}.{k}" if prefix else str(k)) for k, s in template.items()}
    return template


def map_tensors(state: Any, fn) -> Any:
    """Apply ``fn`` to every tensor of a state structure, keeping the structure."""
    flat = flatten(state)
    return unflatten(state, {k: fn(v) for k, v in flat.items()})


def select(state: Any, index: Tensor) -> Any:
    """The state of the streams ``index`` (batch is dim 0 of every tensor)."""
    return map_tensors(state, lambda t: t.index_select(0, index))


def scatter(state: Any, index: Tensor, sub: Any) -> Any:
    """Copy of ``state`` with streams ``index`` replaced by ``sub`` (a :func:`select` result)."""
    flat, flat_sub = flatten(state), flatten(sub)
    out = {}
    for k, t in flat.items():
        t = t.clone()
        t[index] = flat_sub[k].to(t.dtype)
        out[k] = t
    return unflatten(state, out)


def batch_size(state: Any) -> int:
    """The number of streams in a state (dim 0 of its tensors): the first tensor found, without
    flattening the whole state (it is asked on every streaming step)."""
    if isinstance(state, Tensor):
        return state.shape[0]
    if dataclasses.is_dataclass(state):
        items = [getattr(state, f.name) for f in dataclasses.fields(state)]
    elif isinstance(state, dict):
        items = list(state.values())
    elif isinstance(state, (list, tuple)):
        items = list(state)
    else:
        items = []
    for item in items:
        if item is not None:
            try:
                return batch_size(item)
            except ValueError:
                continue
    raise ValueError("the state holds no tensor")


def num_elements(state: Any) -> int:
    """Total number of tensor elements: constant over time for a bounded streaming state."""
    return sum(t.numel() for t in flatten(state).values())


def concat(states: list[Any]) -> Any:
    """Stack the states of several separate streams into one batch."""
    flats = [flatten(s) for s in states]
    return unflatten(states[0], {k: torch.cat([f[k] for f in flats], 0) for k in flats[0]})
