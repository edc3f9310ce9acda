"""The CLI clients' --api-key-file: a bare key, or a server's tenant file (its first entry's
key: `yaie serve --demo` calls its own stack with it)."""

from __future__ import annotations

from yaie.cli.client_security import api_key


def test_a_bare_key_or_the_first_tenant_entry(tmp_path) -> None:
    bare = tmp_path / "bare"
    bare.write_text("  sk-bare\n")
    tenants = tmp_path / "tenants"
    tenants.write_text("# keys\n\nalice: sk-alice admin\nbob: sk-bob\n")
    assert api_key(str(bare)) == "sk-bare"
    assert api_key(str(tenants)) == "sk-alice"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert api_key(str(empty)) is None
