"""zarrl.buffers"""

from .cached_slice_sampler import CachedSliceSampler
from .format import CorruptChunkError, ReadOnlyStorageError, StoreFormatError
from .sequences import pad_sequences, unpad
from .storage import ZarrStorage

__all__ = [
    "ZarrStorage",
    "CachedSliceSampler",
    "CorruptChunkError",
    "ReadOnlyStorageError",
    "StoreFormatError",
    "pad_sequences",
    "unpad",
]
