"""zarrl.buffers"""

from .format import CorruptChunkError, ReadOnlyStorageError, StoreFormatError
from .storage import ZarrStorage

__all__ = ["ZarrStorage", "CorruptChunkError", "ReadOnlyStorageError", "StoreFormatError"]
