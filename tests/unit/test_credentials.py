"""API key material (format, randomness, hashing), key ids, principals and JWT minting."""

from __future__ import annotations

import base64
import re
import time

import jwt
import pytest

from shared.credentials import (
    PERMISSIONS,
    Principal,
    check_permissions,
    generate_key,
    hash_key,
    key_id_of,
    key_matches,
    mint_token,
)

SECRET = "s" * 40
KEY_FORMAT = re.compile(r"^tes_[a-z0-9]{12}_[A-Za-z0-9_-]{32}$")


def test_key_format_and_embedded_id():
    new = generate_key()
    assert KEY_FORMAT.match(new.secret)
    assert new.secret.startswith(f"tes_{new.key_id}_")
    assert key_id_of(new.secret) == new.key_id


def test_the_secret_part_carries_at_least_128_random_bits():
    secrets_part = generate_key().secret.split("_", 2)[2]
    raw = base64.urlsafe_b64decode(secrets_part + "=" * (-len(secrets_part) % 4))
    assert len(raw) * 8 >= 128
    keys = [generate_key() for _ in range(2000)]
    assert len({k.secret.split("_", 2)[2] for k in keys}) == 2000
    assert len({k.key_id for k in keys}) == 2000
    # Every character position varies: not a counter or a timestamp in disguise.
    parts = [k.secret.split("_", 2)[2] for k in keys]
    assert all(len({p[i] for p in parts}) > 20 for i in range(32))


def test_only_the_hash_is_kept_and_it_compares():
    new = generate_key()
    assert new.key_hash == hash_key(new.secret)
    assert re.fullmatch(r"[0-9a-f]{64}", new.key_hash)
    assert new.secret not in new.key_hash
    assert key_matches(new.secret, new.key_hash)
    tampered = new.secret[:-1] + ("A" if new.secret[-1] != "A" else "B")
    assert not key_matches(tampered, new.key_hash)
    assert not key_matches(generate_key().secret, new.key_hash)
    assert not key_matches(new.secret, "")


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "tes_",
        "not-a-key",
        "Bearer tes_abcdefghijkl_" + "x" * 32,
        "tes_abcdefghijkl_" + "x" * 31,  # secret too short
        "tes_ABCDEFGHIJKL_" + "x" * 32,  # id is lower case
        "tes_abcdefghijk_" + "x" * 32,  # id too short
        "tes_abcdefghijkl_" + "x" * 32 + "\n",  # a trailing newline is not ours
        " tes_abcdefghijkl_" + "x" * 32,
        "tes_abcdefghijkl_" + "x" * 30 + "!!",
        "sk_abcdefghijkl_" + "x" * 32,
    ],
)
def test_key_id_of_rejects_junk(junk):
    assert key_id_of(junk) is None


def test_mint_token_carries_subject_permissions_and_expiry():
    before = int(time.time())
    token = mint_token(SECRET, "svc", ["tasks:read", "tasks:execute", "tasks:read"], ttl=120)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "svc"
    assert claims["permissions"] == ["tasks:execute", "tasks:read"]
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 120
    assert "iss" not in claims and "aud" not in claims
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_mint_token_with_issuer_and_audience():
    token = mint_token(SECRET, "svc", ["*"], issuer="auth", audience="taskexec")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="taskexec", issuer="auth")
    assert (claims["iss"], claims["aud"]) == ("auth", "taskexec")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "x" * 40, algorithms=["HS256"], audience="taskexec")


def test_principal_permissions():
    reader = Principal("alice", frozenset({"tasks:read"}), key_id="abc")
    assert reader.can("tasks:read") and not reader.can("tasks:execute")
    assert not reader.is_admin
    assert reader.limit_key == "key:abc"
    everything = Principal("root", frozenset({"*"}))
    assert all(everything.can(p) for p in PERMISSIONS) and everything.is_admin
    assert everything.limit_key == "sub:root"
    assert Principal("ops", frozenset({"tasks:admin"})).is_admin


def test_check_permissions_lists_unknown_ones():
    assert check_permissions(["*", "tasks:read", "tasks:definitions:list"]) == []
    assert check_permissions(["tasks:read", "tasks:fly", "admin"]) == ["tasks:fly", "admin"]


def test_the_seed_permissions_are_known():
    assert {
        "tasks:execute",
        "tasks:read",
        "tasks:cancel",
        "tasks:list",
        "tasks:definitions:list",
        "tasks:definitions:read",
    } <= set(PERMISSIONS)
