"""Tenants of the public APIs: who an API key belongs to, whether it may see operator details,
and its limits. The key table is read from `--api-key-file` (or $YAIE_API_KEY) and re-read on
SIGHUP; gRPC and HTTP share one table.

Key file syntax, one entry a line (lines starting with `#` and blank lines are skipped):

    alice: sk-alice-key
    ops: sk-ops-key admin
    batch: sk-batch-key max_concurrent=64 max_queued=256

A tenant name is 1-64 of `A-Z a-z 0-9 . _ -`; a key is printable ASCII without whitespace, each
key unique. One tenant may have several lines (key rotation), each with the same options. A
file that holds one bare key (the older format) is tenant `default`, an admin; $YAIE_API_KEY
is too. With no key at all, the server is open: every caller is the
anonymous tenant, an admin.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

API_KEY_ENV = "YAIE_API_KEY"
DEFAULT_TENANT = "default"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LINE = re.compile(r"^([^\s:]+):\s+(\S+)((?:\s+\S+)*)\s*$")
_LIMITS = ("max_concurrent", "max_queued")


@dataclass(frozen=True)
class Tenant:
    """A caller of the public APIs. Limits: None means only the server-wide ones apply."""

    name: str
    admin: bool = False
    max_concurrent: int | None = None  # live requests (queued + running) at once
    max_queued: int | None = None  # requests waiting for a worker's batch

    @property
    def label(self) -> str:
        """The name in logs and metrics (the anonymous tenant of an open server: `-`)."""
        return self.name or "-"

    def cache_namespace(self, cache_salt: str) -> str:
        """The prefix-cache namespace of a request: the tenant's, narrowed by its cache_salt.
        Tenant names hold no `/`, so different tenants never share a namespace."""
        return f"{self.name}/{cache_salt}" if self.name else cache_salt


ANONYMOUS = Tenant("", admin=True)


@dataclass(frozen=True)
class TenantDefaults:
    """`--tenant-max-concurrent` and `--tenant-max-queued`: for tenants whose line sets none."""

    max_concurrent: int | None = None
    max_queued: int | None = None

    def __post_init__(self) -> None:
        for name in _LIMITS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--tenant-{name.replace('_', '-')} must be >= 1, got {value}")


def key_digest(key: bytes) -> bytes:
    # Keys are looked up by digest: the lookup's timing tells nothing about a key's bytes.
    return hashlib.sha256(key).digest()


def parse_keys(text: str, source: str, defaults: TenantDefaults) -> dict[bytes, Tenant]:
    """The key file's entries (digest of key -> tenant); ValueError naming source and line."""
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if len(lines) == 1 and _is_bare_key(lines[0][1]):
        return {
            key_digest(_key(lines[0][1], source, lines[0][0])): _with_defaults(
                Tenant(DEFAULT_TENANT, admin=True), defaults
            )
        }
    tenants: dict[str, Tenant] = {}
    keys: dict[bytes, str] = {}
    for number, line in lines:
        name, key, tenant = _parse_line(line, source, number)
        if tenants.get(name, tenant) != tenant:
            raise ValueError(f"{source} line {number}: tenant {name!r} has other options above")
        tenants[name] = tenant
        digest = key_digest(key)
        if digest in keys:
            owner = keys[digest]
            raise ValueError(f"{source} line {number}: this key is already tenant {owner!r}'s")
        keys[digest] = name
    if not keys:
        raise ValueError(f"{source} holds no API key")
    return {digest: _with_defaults(tenants[name], defaults) for digest, name in keys.items()}


def _is_bare_key(line: str) -> bool:
    return _LINE.match(line) is None and not any(c.isspace() for c in line)


def _key(text: str, source: str, number: int) -> bytes:
    if not text or not all(0x21 <= ord(c) < 0x7F for c in text):
        raise ValueError(f"{source} line {number}: a key is printable ASCII without whitespace")
    return text.encode("ascii")


def _parse_line(line: str, source: str, number: int) -> tuple[str, bytes, Tenant]:
    match = _LINE.match(line)
    if match is None:
        raise ValueError(
            f"{source} line {number}: expected `TENANT: KEY [admin] [max_concurrent=N] "
            "[max_queued=N]` (or a file of one bare key)"
        )
    name, key, options = match.group(1), match.group(2), match.group(3).split()
    if not _NAME.match(name):
        raise ValueError(f"{source} line {number}: tenant names are 1-64 of A-Z a-z 0-9 . _ -")
    fields: dict[str, object] = {}
    for option in options:
        option_name, _, value = option.partition("=")
        if option == "admin":
            fields["admin"] = True
        elif option_name in _LIMITS and value.isdigit() and int(value) >= 1:
            fields[option_name] = int(value)
        else:
            raise ValueError(f"{source} line {number}: unknown option {option!r}")
    return name, _key(key, source, number), Tenant(name, **fields)  # type: ignore[arg-type]


def _with_defaults(tenant: Tenant, defaults: TenantDefaults) -> Tenant:
    limits = {name: getattr(defaults, name) for name in _LIMITS if getattr(tenant, name) is None}
    return replace(tenant, **limits)


def load_keys(
    key_file: str | None, defaults: TenantDefaults, environ: dict[str, str] | None = None
) -> dict[bytes, Tenant] | None:
    """key_file's table, else $YAIE_API_KEY's one key (tenant `default`); None when neither
    is set (an open server). ValueError on an unreadable file or a bad entry."""
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {key_file}: {exc}") from exc
        return parse_keys(text, key_file, defaults)
    key = (os.environ if environ is None else environ).get(API_KEY_ENV)
    if key is None:
        return None
    if not key or not _is_bare_key(key.strip()) or key != key.strip():
        raise ValueError(f"the API key from ${API_KEY_ENV} is empty or holds whitespace")
    return parse_keys(key, f"${API_KEY_ENV}", defaults)
