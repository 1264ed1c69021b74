"""zarrl.buffers"""

from .cached_slice_sampler import CachedSliceSampler
from .errors import CorruptChunkError, ReadOnlyStorageError, StoreFormatError, UnsafeStoreError
from .ray_data import read_ray_dataset
from .sequences import pad_sequences, unpad
from .storage import ZarrStorage
from .verify import Problem, verify_store

__all__ = [
    "ZarrStorage",
    "CachedSliceSampler",
    "CorruptChunkError",
    "ReadOnlyStorageError",
    "StoreFormatError",
    "UnsafeStoreError",
    "Problem",
    "pad_sequences",
    "unpad",
    "verify_store",
    "read_ray_dataset",
]
