"""Mini-YAIE kernels: radix tree, KV block manager, paged radix attention, sampling."""
