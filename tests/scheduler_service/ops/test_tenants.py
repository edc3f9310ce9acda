"""The API key file: one bare key (tenant `default`, an admin) or `TENANT: KEY [admin]
[max_concurrent=N] [max_queued=N]` lines; bad lines are refused naming the line; the limit
flags fill in what a line leaves out; reload() takes a new file and keeps the old table when
the new one is bad."""

from __future__ import annotations

import argparse

import pytest

from yaie.scheduler_service.ops.auth import KeyTable
from yaie.scheduler_service.ops.flags import add_scheduler_arguments, server_options
from yaie.scheduler_service.ops.tenants import ANONYMOUS, Tenant, TenantDefaults, parse_keys

NONE = TenantDefaults()


def _bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def _table(tmp_path, text: str, defaults: TenantDefaults = NONE) -> KeyTable:
    path = tmp_path / "keys"
    path.write_text(text)
    return KeyTable(str(path), defaults, environ={})


def test_tenant_lines_with_options_comments_and_rotation(tmp_path) -> None:
    table = _table(
        tmp_path,
        "# our tenants\n\nalice: sk-a1\nalice: sk-a2\n  ops: sk-ops admin\n"
        "batch: sk-b max_concurrent=4 max_queued=8\n",
    )
    assert table.tenant_of(_bearer("sk-a1")) == table.tenant_of(_bearer("sk-a2")) == Tenant("alice")
    assert table.tenant_of(_bearer("sk-ops")) == Tenant("ops", admin=True)
    assert table.tenant_of(_bearer("sk-b")) == Tenant("batch", max_concurrent=4, max_queued=8)
    assert table.tenant_of(_bearer("sk-none")) is None
    assert table.tenant_of(()) is None
    assert [t.name for t in table.tenants()] == ["alice", "batch", "ops"]


def test_one_bare_key_is_the_default_admin_tenant(tmp_path) -> None:
    table = _table(tmp_path, "  sk-only:key#1\n")  # a bare key may hold ':' and '#'
    assert table.tenant_of(_bearer("sk-only:key#1")) == Tenant("default", admin=True)


def test_the_limit_flags_fill_in_what_a_line_leaves_out(tmp_path) -> None:
    defaults = TenantDefaults(max_concurrent=16, max_queued=32)
    table = _table(tmp_path, "a: k1\nb: k2 max_queued=2\n", defaults)
    assert table.tenant_of(_bearer("k1")) == Tenant("a", max_concurrent=16, max_queued=32)
    assert table.tenant_of(_bearer("k2")) == Tenant("b", max_concurrent=16, max_queued=2)
    with pytest.raises(ValueError, match="tenant-max-queued"):
        TenantDefaults(max_queued=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no API key"),
        ("# only a comment\n", "no API key"),
        ("alice: k1\nstray-bare-key\n", "line 2"),
        ("alice: k1\nbob: k1\n", "already tenant 'alice'"),
        ("al/ice: k1\n", "tenant names"),
        ("alice: k1 superuser\n", "unknown option"),
        ("alice: k1 max_queued=0\n", "unknown option"),
        ("alice: k1 admin\nalice: k2\n", "other options"),
        ("alice: kéy\n", "printable ASCII"),
    ],
)
def test_bad_key_files_are_refused_naming_the_line(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keys(text, "keys.txt", NONE)


def test_reload_takes_the_new_file_and_keeps_the_old_on_error(tmp_path) -> None:
    table = _table(tmp_path, "alice: k-old\n")
    (tmp_path / "keys").write_text("alice: k-new\nbob: k-bob\n")
    table.reload()
    assert table.tenant_of(_bearer("k-old")) is None
    assert table.tenant_of(_bearer("k-new")) == Tenant("alice")
    (tmp_path / "keys").write_text("alice k-broken\n")
    with pytest.raises(ValueError):
        table.reload()
    assert table.tenant_of(_bearer("k-bob")) == Tenant("bob")


def test_without_keys_every_caller_is_the_anonymous_admin() -> None:
    table = KeyTable(None, environ={})
    assert not table.required and table.tenant_of(()) is ANONYMOUS and ANONYMOUS.admin
    assert ANONYMOUS.cache_namespace("salt") == "salt"  # as before tenants existed
    assert Tenant("alice").cache_namespace("salt") == "alice/salt"


def test_the_flags_build_the_table(tmp_path) -> None:
    (tmp_path / "keys").write_text("alice: k1\n")
    parser = argparse.ArgumentParser()
    add_scheduler_arguments(parser, "model")
    args = parser.parse_args(
        ["--api-key-file", str(tmp_path / "keys"), "--tenant-max-concurrent", "3"]
    )
    options = server_options(args)
    assert options.keys.tenant_of(_bearer("k1")) == Tenant("alice", max_concurrent=3)
    assert len(options.interceptors()) == 1


def test_tenant_limits_without_keys_are_refused(monkeypatch) -> None:
    monkeypatch.delenv("YAIE_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_scheduler_arguments(parser, "model")
    with pytest.raises(ValueError, match="need API keys"):
        server_options(parser.parse_args(["--tenant-max-queued", "4"]))
