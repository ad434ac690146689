"""JWT claims the edge refuses: odd subjects, non-numeric times, long lifetimes, list scopes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from tests.api.test_jwt import PERMISSION, assert_unauthorized, call, claims, make_client
from tests.helpers import JWT_SECRET

__all__ = ["make_client"]  # a fixture, imported for the tests below

ALL = ["tasks:list", "tasks:read", "tasks:execute", PERMISSION]


def token(**overrides: Any) -> str:
    return jwt.encode(claims(permissions=ALL, **overrides), JWT_SECRET)


@pytest.mark.parametrize("subject", ["ali\x00ce", "ali\nce", "\x1b[31mroot", "a\u2028b"])
def test_a_subject_with_nul_or_control_characters_is_a_401_everywhere(client, subject):
    headers = {"Authorization": f"Bearer {token(sub=subject)}"}
    responses = [
        client.get("/api/v1/tasks", headers=headers),
        client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=headers),
        client.post("/api/v1/tasks", json={"taskDefinitionId": "echo"}, headers=headers),
    ]
    for response in responses:
        assert_unauthorized(response)
        assert "sub" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["%d", True, "soon", [1], {"t": 1}])
def test_time_claims_must_be_numbers(client, claim, value):
    now = int(time.time())
    number = now + 60 if claim == "exp" else now - 60
    odd = value % number if value == "%d" else value
    response = call(client, token(**{claim: odd}))
    assert_unauthorized(response)
    assert claim in response.get_json()["error"]["message"]


def test_numeric_time_claims_still_pass(client):
    now = time.time()
    assert call(client, token(exp=now + 60.5, nbf=now - 1.5, iat=now - 1)).status_code == 200


def test_a_token_living_longer_than_the_maximum_is_refused(client, make_client):
    now = int(time.time())
    assert call(client, token(iat=now, exp=now + 23 * 3600)).status_code == 200
    too_long = call(client, token(iat=now, exp=now + 25 * 3600))
    assert_unauthorized(too_long)
    assert "lifetime" in too_long.get_json()["error"]["message"]
    # Without iat the lifetime is counted from now; an old iat cannot hide a far exp either.
    assert_unauthorized(call(client, token(iat=None, exp=now + 25 * 3600)))
    assert_unauthorized(call(client, token(iat=now - 3600, exp=now + 24 * 3600)))

    strict = make_client(jwt_max_lifetime=600)
    assert call(strict, token(iat=now, exp=now + 300)).status_code == 200
    assert_unauthorized(call(strict, token(iat=now, exp=now + 3600)))
    unlimited = make_client(jwt_max_lifetime=0)
    assert call(unlimited, token(iat=now, exp=now + 400 * 86400)).status_code == 200


def test_scope_is_accepted_only_as_a_space_separated_string(client):
    as_list = jwt.encode(claims(permissions=None, scope=[PERMISSION]), JWT_SECRET)
    response = call(client, as_list)
    assert_unauthorized(response)
    assert "scope" in response.get_json()["error"]["message"]
    as_string = jwt.encode(claims(permissions=None, scope=f"openid {PERMISSION}"), JWT_SECRET)
    assert call(client, as_string).status_code == 200


@pytest.mark.parametrize(
    "bad",
    ["not-a-token", "abc.def", "e30.e30.c2ln", "x" * 40 + ".y.z"],
)
def test_refusals_do_not_quote_the_library(client, bad):
    message = call(client, bad).get_json()["error"]["message"]
    assert message.startswith("invalid token: ")
    for internal in ("segments", "padding", "Invalid", "Signature verification", "Expecting"):
        assert internal not in message, message


def test_a_wrong_signature_says_so_in_our_words(client):
    message = call(client, jwt.encode(claims(), "another-secret-" + "y" * 40)).get_json()
    assert message["error"]["message"] == "invalid token: the signature does not verify"
