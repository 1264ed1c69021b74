"""zarrl.buffers"""

from .format import CorruptChunkError, ReadOnlyStorageError, StoreFormatError
from .sequences import pad_sequences, unpad
from .storage import ZarrStorage

__all__ = [
    "ZarrStorage",
    "CorruptChunkError",
    "ReadOnlyStorageError",
    "StoreFormatError",
    "pad_sequences",
    "unpad",
]
