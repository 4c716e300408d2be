"""Count the bytes each Triton kernel loads and stores, from its own ``tl.load``/``tl.store``
calls, by instrumenting triton's CPU interpreter (``TRITON_INTERPRET=1``).

Within :func:`record`, every launch of an interpreted kernel is a :class:`Launch` holding, per
memory access, the addresses the mask lets through, the element size and the eviction policy.
From them: ``unique_read`` (each address loaded counts once: what DRAM serves if re-reads hit
L2), ``written`` (every byte stored), and per kernel argument the loads issued and their
policies. This is the check that the kernels' DRAM design (``megatron_gatednorm.ops.traffic``)
cannot regress without a GPU; the GPU check's ``ncu`` run measures the real bytes.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np


@dataclass
class Launch:
    name: str
    args: Dict[str, Tuple[int, int]]                       # pointer arg -> (start, end) address
    loads: List[Tuple[np.ndarray, int, str]] = field(default_factory=list)
    stores: List[Tuple[np.ndarray, int]] = field(default_factory=list)

    def _addresses(self, accesses) -> np.ndarray:
        """Byte addresses touched (element address + byte offset for each byte of the element)."""
        parts = [a[:, None] + np.arange(size, dtype=np.uint64)[None, :] for a, size, *_ in accesses]
        return np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0, np.uint64)

    @property
    def unique_read(self) -> int:
        return int(np.unique(self._addresses(self.loads)).size)

    @property
    def issued_read(self) -> int:
        return sum(a.size * size for a, size, _ in self.loads)

    @property
    def written(self) -> int:
        return sum(a.size * size for a, size in self.stores)

    def arg_of(self, addresses: np.ndarray) -> List[str]:
        names = []
        for name, (lo, hi) in self.args.items():
            if ((addresses >= lo) & (addresses < hi)).any():
                names.append(name)
        return names

    def loads_of(self, arg: str) -> Dict[str, int]:
        """Bytes loaded from pointer argument ``arg``, by eviction policy."""
        lo, hi = self.args[arg]
        out: Dict[str, int] = defaultdict(int)
        for a, size, policy in self.loads:
            n = int(((a >= lo) & (a < hi)).sum())
            if n:
                out[policy] += n * size
        return dict(out)

    def unique_read_of(self, arg: str) -> int:
        lo, hi = self.args[arg]
        addr = self._addresses(self.loads)
        return int(np.unique(addr[(addr >= lo) & (addr < hi)]).size)


def _policy_name(policy) -> str:
    text = str(policy).lower()
    for name in ("evict_first", "evict_last"):
        if name in text:
            return name
    return "evict_normal"


@contextlib.contextmanager
def record():
    """Yield a list that fills with one :class:`Launch` per interpreted kernel launch."""
    from triton.runtime import interpreter as interp

    launches: List[Launch] = []
    builder = interp.InterpreterBuilder
    saved = (
        interp.InterpretedFunction.run, builder.create_masked_load, builder.create_masked_store,
        builder.get_cache_policy,
    )
    run, masked_load, masked_store, _ = saved

    def run_recorded(self, *args, grid, warmup, **kwargs):
        if not warmup:
            spans = {}
            for name, arg in zip(self.arg_names, args):
                if hasattr(arg, "data_ptr"):
                    storage = arg.untyped_storage()
                    spans[name] = (storage.data_ptr(), storage.data_ptr() + storage.nbytes())
            launches.append(Launch(self.fn.__name__, spans))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    def element_size(ptrs) -> int:
        return ptrs.get_element_ty().primitive_bitwidth // 8

    def load_recorded(self, ptrs, mask, other, cache_policy, is_volatile):
        m = np.broadcast_to(mask.data, ptrs.data.shape)
        launches[-1].loads.append((ptrs.data[m].astype(np.uint64), element_size(ptrs), cache_policy))
        return masked_load(self, ptrs, mask, other, cache_policy, is_volatile)

    def store_recorded(self, ptrs, value, mask, cache_policy):
        m = np.broadcast_to(mask.data, ptrs.data.shape)
        launches[-1].stores.append((ptrs.data[m].astype(np.uint64), element_size(ptrs)))
        return masked_store(self, ptrs, value, mask, cache_policy)

    interp.InterpretedFunction.run = run_recorded
    builder.create_masked_load = load_recorded
    builder.create_masked_store = store_recorded
    builder.get_cache_policy = lambda self, cache_modifier, eviction_policy: _policy_name(eviction_policy)
    try:
        yield launches
    finally:
        (interp.InterpretedFunction.run, builder.create_masked_load, builder.create_masked_store,
         builder.get_cache_policy) = saved
