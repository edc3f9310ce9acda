"""`yaie chat`: an interactive chat with a running stack in the terminal, over the gRPC API.

Each line typed is a user message; the reply streams back, and the whole conversation goes with
every request (the history). Ctrl-D, Ctrl-C, /bye or /exit leave; /clear forgets the history.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from yaie.cli import arguments, client_security
from yaie.cli.generate import DEFAULT_TARGET, add_wait_argument, wait_seconds
from yaie.cli.health_probe import wait_for_serving
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

PROMPT = ">>> "
LEAVE, CLEAR = ("/bye", "/exit"), "/clear"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yaie chat",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=arguments.DefaultsFormatter,
    )
    p.add_argument("--target", default=DEFAULT_TARGET, help="scheduler HOST:PORT")
    p.add_argument("--system", default=None, help="a system message to start the conversation")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens of one reply")
    arguments.add_sampling_arguments(p)
    add_wait_argument(p)
    p.add_argument("--timeout", type=float, default=None, help="deadline of each reply, seconds")
    client_security.add_arguments(p)
    return p


class Chat:
    """One conversation over one channel: the messages so far, and the call streaming now."""

    def __init__(self, args: argparse.Namespace, channel: grpc.Channel) -> None:
        self.args = args
        self.stub = generation_pb2_grpc.GenerationStub(channel)
        self.metadata = client_security.call_metadata(args)
        self.messages: list[pb.ChatMessage] = []
        self.clear()

    def clear(self) -> None:
        system = self.args.system
        self.messages = [] if system is None else [pb.ChatMessage(role="system", content=system)]

    def model_name(self) -> str:
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=self.metadata)
        return Path(info.model).name or info.model

    def reply(self, text: str) -> None:
        """Sends text with the history, streams the answer to stdout, keeps both (a failed
        or interrupted reply keeps neither)."""
        request = pb.GenerateRequest(
            messages=pb.ChatMessages(
                messages=[*self.messages, pb.ChatMessage(role="user", content=text)]
            )
        )
        arguments.fill_sampling(self.args, request.sampling)
        request.stopping.max_new_tokens = self.args.max_new_tokens
        request.output.skip_special_tokens = True
        call = self.stub.Generate(request, timeout=self.args.timeout, metadata=self.metadata)
        answer, last = [], pb.GenerateResponse()
        try:
            for frame in call:
                sys.stdout.write(frame.text)
                sys.stdout.flush()
                answer.append(frame.text)
                last = frame
        except KeyboardInterrupt:
            call.cancel()  # the server aborts the request
            raise
        sys.stdout.write("\n")
        if last.finish_reason == pb.FINISH_REASON_LENGTH:
            print(
                f"[reply cut at {last.usage.completion_tokens} tokens: --max-new-tokens]",
                file=sys.stderr,
            )
        # The answer as generated: the history then renders to the tokens the model wrote,
        # which the prefix cache still holds.
        self.messages += [
            pb.ChatMessage(role="user", content=text),
            pb.ChatMessage(role="assistant", content="".join(answer)),
        ]


def converse(chat: Chat) -> None:
    """Reads lines until Ctrl-D or /bye (Ctrl-C propagates: the caller leaves)."""
    while True:
        try:
            line = input(PROMPT).strip()
        except EOFError:
            sys.stdout.write("\n")
            return
        if not line:
            continue
        if line in LEAVE:
            return
        if line == CLEAR:
            chat.clear()
            print("[history cleared]", file=sys.stderr)
            continue
        try:
            chat.reply(line)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            print(f"\n[{error.code().name}: {error.details()}]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if sys.stdin.isatty():
        import readline  # noqa: F401 (line editing and recall for input())
    try:
        if (wait := wait_seconds(args)) > 0:
            wait_for_serving(args.target, wait, security=args)
        with client_security.open_channel(args.target, args) as channel:
            chat = Chat(args, channel)
            print(
                f"chatting with {chat.model_name()} at {args.target}: Ctrl-D or /bye leaves, "
                "/clear forgets the conversation",
                file=sys.stderr,
            )
            converse(chat)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0
    except (grpc.RpcError, TimeoutError, OSError) as error:
        return client_security.report_failure("yaie chat", args.target, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
