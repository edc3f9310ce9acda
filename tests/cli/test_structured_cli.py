"""`yaie generate --json-schema FILE | --json-object | --regex R | --ebnf FILE` and
`yaie bench --json-schema FILE` put the constraint into the GenerateRequest's response_format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yaie.cli import bench, generate
from yaie.cli.bench import datasets as ds
from yaie.cli.bench import grpc_client as bench_grpc
from yaie.cli.bench import openai_client as bench_openai

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})


def _request(argv: list[str]):
    return generate.build_request(generate.build_parser().parse_args(["hi", *argv]))


def test_generate_options_set_the_response_format(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(SCHEMA)
    grammar = tmp_path / "g.ebnf"
    grammar.write_text('root ::= "x"')
    assert _request(["--json-schema", str(schema)]).response_format.json_schema == SCHEMA
    assert _request(["--json-object"]).response_format.json_object
    assert _request(["--regex", r"\d+"]).response_format.regex == r"\d+"
    assert _request(["--ebnf", str(grammar)]).response_format.ebnf == 'root ::= "x"'
    assert _request([]).response_format.WhichOneof("format") is None


def test_generate_takes_one_constraint_at_most() -> None:
    with pytest.raises(SystemExit):
        generate.build_parser().parse_args(["hi", "--regex", "a", "--json-object"])


def test_bench_json_schema_constrains_every_request(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(SCHEMA)
    args = bench.build_parser().parse_args(["--dataset", "fixed", "--json-schema", str(schema)])
    config = bench.config_from_args(args)
    request = ds.BenchRequest([1, 2, 3], 8)
    message = bench_grpc.to_proto(request, "r0", 0.0, False, config.json_schema)
    assert message.response_format.json_schema == SCHEMA
    body = bench_openai.payload(request, 0.0, config.json_schema)
    assert body["response_format"]["json_schema"]["schema"] == json.loads(SCHEMA)
    plain = bench.config_from_args(bench.build_parser().parse_args(["--dataset", "fixed"]))
    assert plain.json_schema is None
    assert not bench_grpc.to_proto(request, "r1", 0.0, False).HasField("response_format")
    assert "response_format" not in bench_openai.payload(request, 0.0)
