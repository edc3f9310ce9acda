"""Structured-output constraints through XGrammar: the syntax check the scheduler runs without a
vocabulary (check_grammar), and the compile the worker runs with one (compile_grammar)."""

from __future__ import annotations

import functools
import re
from typing import Any

# Distinct constraint texts whose syntax check is remembered (the scheduler's bounded cache).
SYNTAX_CACHE_SIZE = 256
# XGrammar prefixes its errors with "[hh:mm:ss] /path/file.cc:line: ": the reason follows.
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def compiler_reason(exc: BaseException) -> str:
    """XGrammar's error message without its source location."""
    return _LOCATION.sub("", str(exc).strip()) or type(exc).__name__


@functools.lru_cache(maxsize=SYNTAX_CACHE_SIZE)
def check_grammar(kind: str, text: str) -> None:
    """ValueError with the compiler's reason when text is not a valid constraint of kind
    ("json_schema", "json_object", "regex", "ebnf"). Needs no vocabulary. A failed check is
    not cached (lru_cache keeps only returns), so a bad text costs its parse each time."""
    import xgrammar as xgr

    builders = {
        "json_schema": lambda: xgr.Grammar.from_json_schema(text, any_whitespace=False),
        "json_object": xgr.Grammar.builtin_json_grammar,
        "regex": lambda: xgr.Grammar.from_regex(text),
        "ebnf": lambda: xgr.Grammar.from_ebnf(text),
    }
    if kind not in builders:
        raise ValueError(f"unknown constraint kind {kind!r}")
    if kind != "json_object" and not text:
        raise ValueError(f"the {kind} constraint is empty")
    try:
        builders[kind]()
    except Exception as exc:  # XGrammar raises RuntimeError (or InvalidJSONError) with a reason
        raise ValueError(f"invalid {kind}: {compiler_reason(exc)}") from exc


def compile_grammar(compiler: Any, kind: str, text: str) -> Any:
    """The CompiledGrammar of a constraint (compiler: an xgrammar.GrammarCompiler); ValueError
    with the compiler's reason. JSON schemas compile without free whitespace: the output is
    compact JSON, and its separators are forced text that jump-forward can append."""
    try:
        if kind == "json_schema":
            return compiler.compile_json_schema(text, any_whitespace=False)
        if kind == "json_object":
            return compiler.compile_builtin_json_grammar()
        if kind == "regex":
            return compiler.compile_regex(text)
        if kind == "ebnf":
            return compiler.compile_grammar(text)
    except Exception as exc:
        raise ValueError(f"invalid {kind}: {compiler_reason(exc)}") from exc
    raise ValueError(f"unknown constraint kind {kind!r}")
