"""The peer of bench_stack.py: Hugging Face transformers' own continuous batching (the manager
behind `model.generate_batch`) on the same requests, each with its own output length and EOS off.

`python stack_hf.py JOB.json` (JOB: model, device, requests [[prompt ids, output len], ...],
limit_s); prints one JSON line: output tokens of the finished requests, seconds (first request
added -> last result, or limit_s after the start), tok/s.
generate_batch itself takes one max_new_tokens for all prompts, so the manager's add_request is
used to give each request its own length, as our stack gets them.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import transformers


def main(job_path: str) -> int:
    job = json.loads(open(job_path, encoding="utf-8").read())
    device = job["device"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        job["model"], dtype=dtype, attn_implementation="sdpa"
    ).to(device)
    load_s = time.perf_counter() - start
    requests = job["requests"]
    config = transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=max(n for _, n in requests),
        eos_token_id=-1,
        pad_token_id=0,
    )
    limit = job.get("limit_s", float("inf"))  # from our start: then report what finished
    with model.continuous_batching_context_manager(generation_config=config, timeout=10) as manager:
        warm_s = time.perf_counter() - start - load_s
        begin = time.perf_counter()
        ids = [
            manager.add_request(ids, request_id=f"r{i}", max_new_tokens=n, eos_token_id=-1)
            for i, (ids, n) in enumerate(requests)
        ]
        outputs = {}
        while len(outputs) < len(ids) and time.perf_counter() - start < limit:
            result = manager.get_result(timeout=1.0)
            if result is not None and result.is_finished():
                outputs[result.request_id] = result
            elif result is None and not manager.is_running():
                break
        seconds = time.perf_counter() - begin
    tokens = sum(len(out.generated_tokens) for out in outputs.values() if out.error is None)
    print(
        json.dumps(
            {
                "transformers": transformers.__version__,
                "num_requests": len(requests),
                "completed": sum(out.error is None for out in outputs.values()),
                "requested_tokens": sum(n for _, n in requests),
                "output_tokens": tokens,
                "seconds": seconds,
                "output_tok_s": tokens / seconds,
                "load_s": load_s,
                "warmup_s": warm_s,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
