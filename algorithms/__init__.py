"""zarrl.algorithms"""

from zarrl.algorithms.path_consistency import path_consistency, segment_marks

__all__ = ["path_consistency", "segment_marks"]
