"""`yaie worker --tp 2` on two GPUs (NCCL, NVLink multicast off): greedy tokens over a real Step
stream equal transformers' on the CPU, fp32 (the multi-GPU counterpart of test_tp_worker)."""

from __future__ import annotations

import signal

import grpc
import pytest
import torch

from tests.processes import free_port, start_serving
from tests.worker_service.driver import (
    Driver,
    Seq,
    StepStream,
    hf_greedy,
    load_hf_model,
    worker_command,
)

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_tp2_on_two_gpus_gives_transformers_greedy_tokens(architecture, tiny_model_dir) -> None:
    model_dir = tiny_model_dir(architecture)
    port = free_port()
    command = worker_command(
        model_dir,
        port,
        "--device",
        "cuda",
        "--dtype",
        "float32",
        "--tp",
        "2",
        "--block-size",
        "16",
        "--num-blocks",
        "64",
    )
    process = start_serving(command, f"127.0.0.1:{port}", 300.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = StepStream(channel)
            driver = Driver(stream, 16, 64)
            lengths = [(1, 5), (2, 37)]
            prompts = [[3 + (s * 131 + i * 71) % 697 for i in range(n)] for s, n in lengths]
            seqs = [driver.add(Seq(i + 1, p, len(p), 24, chunk=16)) for i, p in enumerate(prompts)]
            driver.run()
            stream.close()
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(60)
    assert status == 0
    hf = load_hf_model(model_dir)
    for seq, prompt in zip(seqs, prompts, strict=True):
        assert seq.outputs == hf_greedy(hf, prompt, 24)
