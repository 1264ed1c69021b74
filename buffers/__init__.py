"""zarrl.buffers"""
