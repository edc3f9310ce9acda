"""`yaie chat` driven through stdin: each reply streams what the API gives for the whole
conversation so far (history kept, /clear forgets it), Ctrl-D and Ctrl-C leave cleanly."""

from __future__ import annotations

import signal
import subprocess

import grpc

from yaie.v1 import generation_pb2 as pb

NEW_TOKENS = 6


def _api_reply(stack, conversation: list[tuple[str, str]]) -> str:
    """The greedy reply of the API to these (role, content) messages, as chat asks for it."""
    request = pb.GenerateRequest(
        messages=pb.ChatMessages(
            messages=[pb.ChatMessage(role=r, content=c) for r, c in conversation]
        ),
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=NEW_TOKENS),
        output=pb.OutputOptions(skip_special_tokens=True),
    )
    with grpc.insecure_channel(stack.target) as channel:
        return "".join(f.text for f in stack.stub(channel).Generate(request, timeout=60))


def test_chat_keeps_the_history_and_clears_it(llama_stack, tools) -> None:
    command = tools.yaie(
        "chat",
        "--target",
        llama_stack.target,
        "--temperature",
        "0",
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--system",
        "Be brief.",
    )
    lines = "The morning train\nThe cook says\n/clear\nThe cook says\n"
    result = subprocess.run(
        command, input=lines.encode(), capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    system = [("system", "Be brief.")]
    first = _api_reply(llama_stack, [*system, ("user", "The morning train")])
    second = _api_reply(
        llama_stack,
        [*system, ("user", "The morning train"), ("assistant", first), ("user", "The cook says")],
    )
    fresh = _api_reply(llama_stack, [*system, ("user", "The cook says")])
    assert result.stdout.decode() == f">>> {first}\n>>> {second}\n>>> >>> {fresh}\n>>> \n"
    err = result.stderr.decode()
    assert "chatting with LlamaForCausalLM" in err and "[history cleared]" in err


def test_ctrl_c_at_the_prompt_leaves_cleanly(llama_stack, tools) -> None:
    command = tools.yaie("chat", "--target", llama_stack.target)
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout.read(4) == b">>> "  # waiting for a line
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        tools.stop(process)
    assert process.returncode == 0 and b"Traceback" not in err
