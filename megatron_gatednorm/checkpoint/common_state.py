"""The common (non-sharded) state of a torch_dist checkpoint — ``args``, ``iteration`` — read
leniently across megatron-core versions.

megatron-core <= 0.18 pickles it to ``common.pt``; >= 0.19 stores it as one ShardedObject
inside the torch_dist files. Classes in the pickled ``args`` that this environment's
megatron-core lacks (an enum added upstream) unpickle as placeholders instead of failing.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import torch

from megatron_gatednorm.checkpoint.errors import CheckpointError


class _Unknown:
    """Stand-in for a class in saved ``args`` that this environment's megatron-core lacks
    (e.g. an enum added in a newer release): the converters never read those fields."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__name__} from a newer release: {self.args}>"


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (AttributeError, ImportError):
            return type(name, (_Unknown,), {"__module__": module})


_lenient_pickle = types.ModuleType("mgn_lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = lambda f, **kw: _LenientUnpickler(f, **kw).load()


def _load_pickled(f):
    """``torch.load`` of saved args that tolerates classes missing here (other megatron-core)."""
    return torch.load(f, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)


# megatron-core >= 0.19 stores the common (non-sharded) state, ``args`` included, as this one
# ShardedObject inside the torch_dist files; older releases wrote it to ``common.pt``
_COMMON_STATE_KEY = "common_state/shard_0_1"


def read_metadata(path: Path):
    """The torch_dist ``.metadata`` of an iteration dir (one read)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path / '.metadata'}: cannot be read ({type(e).__name__}: {e})") from None


def _read_common_state_object(path: Path, metadata):
    import io

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _RawBytes(DefaultLoadPlanner):  # keep the bytes: DCP's own torch.load is not lenient
        def load_bytes(self, read_item, value):
            raw[read_item.dest_index.fqn] = value.read()

    if _COMMON_STATE_KEY not in metadata.state_dict_metadata:
        raise CheckpointError(
            f"{path}: no common.pt and no {_COMMON_STATE_KEY!r} in the torch_dist files "
            "(they hold the model's args); expected a checkpoint saved by Megatron-LM"
        )
    raw = {}
    try:
        dcp_load({_COMMON_STATE_KEY: io.BytesIO()}, storage_reader=FileSystemReader(str(path)),
                 planner=_RawBytes(), no_dist=True)
        loaded = _load_pickled(io.BytesIO(raw[_COMMON_STATE_KEY]))
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise assorted errors
        raise CheckpointError(f"{path}: the common state cannot be read ({type(e).__name__}: {e})") from None
    return loaded[0] if isinstance(loaded, (list, tuple)) else loaded


def read_common(path: Path, metadata=None) -> dict:
    """The common state (``args``, ``iteration``, ...) of a torch_dist iteration dir, from
    ``common.pt`` (megatron-core <= 0.18, and :func:`write_checkpoint` there) or the torch_dist
    files (``metadata``: their already read ``.metadata``, if the caller has it)."""
    where = path / "common.pt"
    if where.is_file():
        try:
            common = _load_pickled(where)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise CheckpointError(f"{where}: cannot be read ({type(e).__name__}: {e})") from None
    else:
        where = path / f"{_COMMON_STATE_KEY} in .metadata"
        common = _read_common_state_object(path, metadata if metadata is not None else read_metadata(path))
    if not isinstance(common, dict) or "args" not in common:
        raise CheckpointError(f"{where}: no 'args'; expected a checkpoint saved by Megatron-LM")
    return common
