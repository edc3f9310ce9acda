"""Mini-YAIE kernels: a library with no processes and no gRPC.

cache/: radix tree, block manager, KV cache manager (pure Python: what the scheduler imports).
attention/ (paged radix attention), sampling/ and elementwise/ (the decoder layer's norm, rotary
and activation) each hold a torch reference, the specification, and Triton kernels for CUDA.
host_copy.py: the host->device copy that sampling and the worker's batch building share.
"""
