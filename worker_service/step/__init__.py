"""One step on the device: plan -> request table -> ForwardBatch -> model -> sampling -> output
(runner.py orchestrates), over the paged KV pool, with decode CUDA graphs and the warm-up."""
