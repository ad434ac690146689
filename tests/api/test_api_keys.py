"""API keys: prefixed, random, stored as a hash, compared in constant time, never logged."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

import psycopg2

from shared import credentials
from shared.credentials import KEY_PREFIX, generate_key, hash_key, key_id_of

PATH = "/api/v1/tasks/definitions"
PERMISSION = "tasks:definitions:list"


def random_part_of(secret: str) -> str:
    """The part after `tes_<id>_` (it may itself contain underscores)."""
    return secret[len(KEY_PREFIX) + 13 :]


def stored_rows(database_url: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM api_keys")
            return cur.fetchall()
    finally:
        conn.close()


def test_keys_are_prefixed_and_carry_at_least_128_random_bits():
    keys = [generate_key() for _ in range(500)]
    assert len({k.secret for k in keys}) == len({k.key_id for k in keys}) == 500
    for key in keys:
        assert key.secret.startswith(KEY_PREFIX)
        assert key_id_of(key.secret) == key.key_id
        random_part = random_part_of(key.secret)
        # base64url: 6 bits per character, and it comes from `secrets`
        assert len(random_part) * 6 >= 128
        assert key.key_hash == hash_key(key.secret) != key.secret
    alphabet = set("".join(random_part_of(k.secret) for k in keys))
    assert len(alphabet) > 60  # the whole base64url alphabet is in use, not a narrow one
    assert math.log2(len(alphabet)) * 32 >= 128


def test_only_a_hash_is_stored(auth, backends):
    headers = auth.key(PERMISSION)
    secret = headers["X-API-Key"]
    rows = stored_rows(backends.database_url)
    assert len(rows) == 1
    flat = " ".join(str(value) for value in rows[0])
    assert secret not in flat
    assert random_part_of(secret) not in flat
    assert hash_key(secret) in flat


def test_a_valid_key_is_accepted_and_its_use_recorded(client, auth, backends):
    headers = auth.key(PERMISSION)
    assert client.get(PATH, headers=headers).status_code == 200
    conn = psycopg2.connect(backends.database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT last_used_at FROM api_keys")
        assert cur.fetchone()[0] is not None
    conn.close()


def test_unknown_wrong_malformed_and_revoked_keys_are_401(client, auth, backends):
    headers = auth.key(PERMISSION)
    secret = headers["X-API-Key"]
    key_id = key_id_of(secret)
    random_part = random_part_of(secret)
    forged_secret = random_part[:-1] + ("A" if random_part[-1] != "A" else "B")
    candidates = [
        f"tes_{key_id}_{forged_secret}",  # the right id, a wrong secret
        f"tes_zzzzzzzzzzzz_{random_part}",  # an unknown id
        secret + "x",  # too long
        secret[:-1],  # too short by one character: a different key
        "tes_",
        "not-a-key",
        secret.upper(),
        f" {secret}x ",
        "x" * 5000,
    ]
    for candidate in candidates:
        response = client.get(PATH, headers={"X-API-Key": candidate})
        assert response.status_code == 401, candidate
        body = response.get_json()
        assert body["error"]["code"] == "UNAUTHORIZED"
        assert candidate.strip() not in response.get_data(as_text=True)
    assert client.get(PATH, headers=headers).status_code == 200
    conn = psycopg2.connect(backends.database_url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
    conn.close()
    # Revoked by SQL (nothing announced): refused once the cached copy expires, within 1 s.
    revoked_at = time.monotonic()
    while client.get(PATH, headers=headers).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0, "a revoked key still works after 1 s"
        time.sleep(0.02)


def test_keys_are_compared_in_constant_time_even_when_the_id_is_unknown(client, auth, monkeypatch):
    headers = auth.key(PERMISSION)
    compared: list[tuple[str, str]] = []
    real = credentials.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", spy)
    assert client.get(PATH, headers=headers).status_code == 200
    assert len(compared) == 1
    unknown = "tes_zzzzzzzzzzzz_" + random_part_of(headers["X-API-Key"])
    assert client.get(PATH, headers={"X-API-Key": unknown}).status_code == 401
    assert len(compared) == 2  # a miss costs the same comparison as a hit


def test_keys_never_reach_the_logs(client, auth, caplog):
    headers = auth.key(PERMISSION)
    secret = headers["X-API-Key"]
    wrong = secret[:-2] + "zz"
    with caplog.at_level(logging.DEBUG):
        client.get(PATH, headers=headers)
        client.get(PATH, headers={"X-API-Key": wrong})
        client.get("/api/v1/tasks/not-a-uuid", headers=headers)
        client.post(
            "/api/v1/tasks", data=b"{", headers={**headers, "Content-Type": "application/json"}
        )
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    for value in (secret, wrong, random_part_of(secret)):
        assert value not in text


def test_an_api_key_takes_precedence_and_a_bad_one_is_not_rescued_by_a_token(client, auth):
    token = auth.token(PERMISSION)
    response = client.get(PATH, headers={"X-API-Key": "tes_nope", **token})
    assert response.status_code == 401
    assert re.search("API key", response.get_json()["error"]["message"])
