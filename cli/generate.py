"""`yaie generate "prompt"`: streams a generation from a running stack to the terminal.

Text goes to stdout as it arrives; a one-line summary goes to stderr. --json prints one JSON
object per frame instead (the GenerateResponse fields), for machines; --top-logprobs N without
--json prints a table of each token's N most likely alternatives after the text. --n N asks for
N completions of the prompt: each is printed whole, under its index, once it has ended (with
--json: every frame, its "index" naming the completion).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from yaie.cli import arguments, client_security, logprob_table
from yaie.cli.health_probe import wait_for_serving
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
LOCAL_WAIT_S = 10.0  # a local server that is still starting (yaie serve loads the model first)
_LOCAL_HOSTS = ("localhost", "::1", "0.0.0.0")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yaie generate",
        description=__doc__.splitlines()[0],
        formatter_class=arguments.DefaultsFormatter,
    )
    p.add_argument("prompt", help="prompt text (with --chat: the user message)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="scheduler HOST:PORT")
    p.add_argument("--chat", action="store_true", help="send the prompt as a chat user message")
    p.add_argument("--max-new-tokens", type=int, default=128, help="0: up to the model's context")
    p.add_argument("--min-new-tokens", type=int, default=0, help="EOS and stops ignored before")
    p.add_argument(
        "--n",
        type=int,
        default=1,
        help="completions of the prompt (1 to 64; the prompt is computed once); with --seed, "
        "completion i uses the seed derived from (seed, i) (README, Parallel sampling)",
    )
    arguments.add_sampling_arguments(p)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="generate past end-of-sequence")
    p.add_argument(
        "--skip-special-tokens",
        action="store_true",
        help="leave special tokens (such as <|im_end|>) out of the text",
    )
    p.add_argument(
        "--top-logprobs",
        type=int,
        default=0,
        help="show each token's N most likely alternatives, with logprobs",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per frame on stdout")
    _add_response_format(p)
    add_wait_argument(p)
    p.add_argument("--timeout", type=float, default=None, help="deadline of the call, seconds")
    p.add_argument(
        "--cache-salt",
        default="",
        help="prefix-cache namespace (per tenant): equal salts share cache",
    )
    p.add_argument(
        "--priority",
        type=_int32,
        default=0,
        help="scheduling priority in [-1000, 1000] (the server checks): higher runs first",
    )
    client_security.add_arguments(p)  # --api-key-file (or $YAIE_API_KEY), --tls-ca, ...
    return p


def _int32(text: str) -> int:
    """An int that fits the proto's int32 (the server checks the range it accepts)."""
    value = int(text)
    if not -(1 << 31) <= value < 1 << 31:
        raise argparse.ArgumentTypeError(f"{value} does not fit a 32-bit integer")
    return value


def is_local(target: str) -> bool:
    """Whether HOST:PORT (or [V6]:PORT) names this machine."""
    host = target[1 : target.find("]")] if target.startswith("[") else target.rsplit(":", 1)[0]
    return host.startswith("127.") or host in _LOCAL_HOSTS


def add_wait_argument(parser: argparse.ArgumentParser) -> None:
    """--wait SECONDS: how long a client command first waits for the server to be SERVING."""
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait this long for the server's health to say SERVING (default: "
        f"{LOCAL_WAIT_S:g} for a target on this machine, else 0)",
    )


def wait_seconds(args: argparse.Namespace) -> float:
    """--wait, or by default a few seconds for a local target (just started, maybe)."""
    if args.wait is not None:
        return args.wait
    return LOCAL_WAIT_S if is_local(args.target) else 0.0


def build_request(args: argparse.Namespace) -> pb.GenerateRequest:
    request = pb.GenerateRequest()
    if args.chat:
        request.messages.messages.add(role="user", content=args.prompt)
    else:
        request.text = args.prompt
    arguments.fill_sampling(args, request.sampling)
    if args.max_new_tokens:
        request.stopping.max_new_tokens = args.max_new_tokens
    request.stopping.min_new_tokens = args.min_new_tokens
    request.stopping.stop.extend(args.stop)
    request.stopping.ignore_eos = args.ignore_eos
    request.output.skip_special_tokens = args.skip_special_tokens
    request.output.top_logprobs = args.top_logprobs
    request.cache_salt = getattr(args, "cache_salt", "")
    request.n = getattr(args, "n", 1)  # the server checks the range (INVALID_ARGUMENT)
    request.priority = getattr(args, "priority", 0)
    fill_response_format(args, request.response_format)
    return request


def _add_response_format(p: argparse.ArgumentParser) -> None:
    """Structured output: at most one constraint on the whole output."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json-schema", metavar="FILE", help="output is JSON valid against FILE")
    group.add_argument("--json-object", action="store_true", help="output is any JSON object")
    group.add_argument("--regex", metavar="R", help="output fully matches the regex R")
    group.add_argument("--ebnf", metavar="FILE", help="output is a sentence of FILE's grammar")


def fill_response_format(args: argparse.Namespace, fmt: pb.ResponseFormat) -> None:
    """Sets fmt from --json-schema / --json-object / --regex / --ebnf (files read here)."""
    if getattr(args, "json_schema", None):
        fmt.json_schema = Path(args.json_schema).read_text(encoding="utf-8")
    elif getattr(args, "json_object", False):
        fmt.json_object = True
    elif getattr(args, "regex", None):
        fmt.regex = args.regex
    elif getattr(args, "ebnf", None):
        fmt.ebnf = Path(args.ebnf).read_text(encoding="utf-8")


def stream(
    target: str,
    request: pb.GenerateRequest,
    out: TextIO,
    as_json: bool = False,
    timeout: float | None = None,
    security: argparse.Namespace | None = None,
    logprobs: dict[int, list[pb.TokenLogprob]] | None = None,
) -> dict[int, pb.GenerateResponse]:
    """Writes each frame to out as it arrives (request.n > 1: each completion's whole text once
    it ended, under a header); returns each completion's last frame by index. security: the
    client_security flags (default: plaintext, the key from $YAIE_API_KEY if set); logprobs,
    when given, collects every frame's by completion."""
    last: dict[int, pb.GenerateResponse] = {0: pb.GenerateResponse()}
    texts: dict[int, list[str]] = {}  # n > 1: text of the completions still running
    security = security or argparse.Namespace()
    metadata = client_security.call_metadata(security)
    with client_security.open_channel(target, security) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        for frame in stub.Generate(request, timeout=timeout, metadata=metadata):
            if as_json:
                out.write(json.dumps(MessageToDict(frame, preserving_proto_field_name=True)) + "\n")
            elif request.n <= 1:
                out.write(frame.text)
            else:
                texts.setdefault(frame.index, []).append(frame.text)
                if frame.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                    text = "".join(texts.pop(frame.index))
                    out.write(f"--- completion {frame.index} ---\n{text}\n")
            out.flush()
            if logprobs is not None:
                logprobs.setdefault(frame.index, []).extend(frame.logprobs)
            last[frame.index] = frame
    if not as_json and request.n <= 1:
        out.write("\n")
    return last


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logprobs: dict[int, list[pb.TokenLogprob]] | None = None
    if args.top_logprobs and not args.json:
        logprobs = {}
    try:
        if (wait := wait_seconds(args)) > 0:
            wait_for_serving(args.target, wait, security=args)
        started = time.monotonic()
        request = build_request(args)
        last = stream(args.target, request, sys.stdout, args.json, args.timeout, args, logprobs)
        for index, items in sorted((logprobs or {}).items()):
            if args.n > 1:
                sys.stdout.write(f"--- completion {index}: logprobs ---\n")
            texts = logprob_table.token_texts(args.target, items, args)
            sys.stdout.write(logprob_table.format_table(items, texts))
    except (grpc.RpcError, TimeoutError, OSError) as error:
        return client_security.report_failure("yaie generate", args.target, error)
    except KeyboardInterrupt:
        return 130
    seconds = time.monotonic() - started
    for index, frame in sorted(last.items()):
        reason = pb.FinishReason.Name(frame.finish_reason).removeprefix("FINISH_REASON_").lower()
        usage = frame.usage
        which = f"completion {index}: " if args.n > 1 else ""
        print(
            f"[{which}{reason}: {usage.completion_tokens} tokens after a {usage.prompt_tokens}"
            f"-token prompt ({usage.cached_tokens} cached) in {seconds:.2f} s]",
            file=sys.stderr,
        )
    return 0
