"""Bearer JWTs: the algorithm and key come from configuration; every bad token is a 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.app import create_app
from config.settings import ConfigurationError
from tests.helpers import JWT_SECRET

PATH = "/api/v1/tasks/definitions"
PERMISSION = "tasks:definitions:list"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "permissions": [PERMISSION],
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hs256_with(secret: bytes, payload: dict[str, Any], kid: str | None = None) -> str:
    """Sign HS256 by hand, with any bytes as the secret (PyJWT refuses PEM keys as secrets)."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def make_client(settings, clean_db) -> Iterator[Callable[..., Any]]:
    """Build an app with some settings overridden; return its test client."""
    apps = []

    def make(**overrides: Any) -> Any:
        app = create_app(settings.with_overrides(**overrides))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["taskexec"].db.close()


def call(client: Any, token: str) -> Any:
    return client.get(PATH, headers={"Authorization": f"Bearer {token}"})


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert "Bearer" in response.headers["WWW-Authenticate"]


# ---------------------------------------------------------------- HS256 (the default)


def test_a_valid_hs256_token_is_accepted(client):
    assert call(client, jwt.encode(claims(), JWT_SECRET, algorithm="HS256")).status_code == 200


def test_permissions_may_come_from_a_space_separated_scope(client):
    token = jwt.encode(claims(permissions=None, scope=f"openid {PERMISSION}"), JWT_SECRET)
    assert call(client, token).status_code == 200
    token = jwt.encode(claims(permissions=None, scope="openid tasks:read"), JWT_SECRET)
    assert call(client, token).status_code == 403
    token = jwt.encode(claims(permissions=None), JWT_SECRET)
    assert call(client, token).status_code == 403


@pytest.mark.parametrize(
    "case",
    [
        "alg-none",
        "alg-none-uppercase",
        "expired",
        "missing-exp",
        "missing-sub",
        "not-yet-valid",
        "wrong-secret",
        "hs384-with-the-right-secret",
        "malformed-garbage",
        "malformed-two-parts",
        "malformed-bad-json",
        "permissions-not-a-list",
        "empty-subject",
    ],
)
def test_bad_hs256_tokens_are_refused(client, case):
    now = int(time.time())
    tokens = {
        "alg-none": lambda: unsigned(claims(), {"alg": "none", "typ": "JWT"}),
        "alg-none-uppercase": lambda: unsigned(claims(), {"alg": "NONE", "typ": "JWT"}),
        "expired": lambda: jwt.encode(claims(exp=now - 3600), JWT_SECRET),
        "missing-exp": lambda: jwt.encode(claims(exp=None), JWT_SECRET),
        "missing-sub": lambda: jwt.encode(claims(sub=None), JWT_SECRET),
        "not-yet-valid": lambda: jwt.encode(claims(nbf=now + 3600), JWT_SECRET),
        "wrong-secret": lambda: jwt.encode(claims(), "another-secret-" + "y" * 40),
        "hs384-with-the-right-secret": lambda: jwt.encode(claims(), JWT_SECRET, algorithm="HS384"),
        "malformed-garbage": lambda: "not-a-token",
        "malformed-two-parts": lambda: "abc.def",
        "malformed-bad-json": lambda: f"{b64(b'{nope')}.{b64(b'{}')}.{b64(b'sig')}",
        "permissions-not-a-list": lambda: jwt.encode(claims(permissions=PERMISSION), JWT_SECRET),
        "empty-subject": lambda: jwt.encode(claims(sub=""), JWT_SECRET),
    }
    assert_unauthorized(call(client, tokens[case]()))


def test_the_bearer_scheme_is_required(client):
    token = jwt.encode(claims(), JWT_SECRET)
    assert_unauthorized(client.get(PATH, headers={"Authorization": f"Token {token}"}))
    assert_unauthorized(client.get(PATH, headers={"Authorization": "Bearer "}))


def test_leeway_forgives_a_little_clock_skew_and_no_more(make_client):
    just_expired = jwt.encode(claims(exp=int(time.time()) - 5), JWT_SECRET)
    assert call(make_client(jwt_leeway=30), just_expired).status_code == 200
    assert_unauthorized(call(make_client(jwt_leeway=0), just_expired))


def test_issuer_and_audience_are_verified_when_configured(make_client):
    client = make_client(jwt_issuer="https://idp.example", jwt_audience="taskexec")
    good = claims(iss="https://idp.example", aud="taskexec")
    assert call(client, jwt.encode(good, JWT_SECRET)).status_code == 200
    assert (
        call(client, jwt.encode({**good, "aud": ["other", "taskexec"]}, JWT_SECRET)).status_code
        == 200
    )
    for bad in (
        {**good, "iss": "https://evil.example"},
        {**good, "aud": "someone-else"},
        {k: v for k, v in good.items() if k != "iss"},
        {k: v for k, v in good.items() if k != "aud"},
    ):
        assert_unauthorized(call(client, jwt.encode(bad, JWT_SECRET)))


def test_bearer_tokens_are_refused_when_no_key_is_configured(make_client):
    client = make_client(jwt_secret="")
    assert_unauthorized(call(client, jwt.encode(claims(), JWT_SECRET)))


# ---------------------------------------------------------------- RS256 / ES256 with a public key


def test_rs256_with_a_public_key(make_client, rsa_key, other_rsa_key, ec_key):
    public_pem = pem(rsa_key)
    client = make_client(jwt_algorithm="RS256", jwt_public_key=public_pem, jwt_secret="")
    assert call(client, jwt.encode(claims(), rsa_key, algorithm="RS256")).status_code == 200
    # The classic confusion attack: HS256 with the public key as the HMAC secret.
    assert_unauthorized(call(client, hs256_with(public_pem.encode(), claims())))
    assert_unauthorized(call(client, hs256_with(public_pem.strip().encode(), claims())))
    assert_unauthorized(call(client, unsigned(claims(), {"alg": "none"})))
    assert_unauthorized(call(client, jwt.encode(claims(), other_rsa_key, algorithm="RS256")))
    assert_unauthorized(call(client, jwt.encode(claims(), rsa_key, algorithm="PS256")))
    assert_unauthorized(call(client, jwt.encode(claims(), ec_key, algorithm="ES256")))
    assert_unauthorized(
        call(client, jwt.encode(claims(exp=int(time.time()) - 600), rsa_key, "RS256"))
    )
    assert_unauthorized(call(client, jwt.encode(claims(exp=None), rsa_key, algorithm="RS256")))


def test_es256_with_a_public_key(make_client, rsa_key, ec_key):
    client = make_client(jwt_algorithm="ES256", jwt_public_key=pem(ec_key), jwt_secret="")
    assert call(client, jwt.encode(claims(), ec_key, algorithm="ES256")).status_code == 200
    assert_unauthorized(call(client, jwt.encode(claims(), rsa_key, algorithm="RS256")))
    assert_unauthorized(call(client, hs256_with(pem(ec_key).encode(), claims())))


def test_the_public_key_may_be_a_file_or_a_one_line_pem(make_client, rsa_key, tmp_path):
    path = tmp_path / "jwt.pub"
    path.write_text(pem(rsa_key))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (
        call(make_client(jwt_algorithm="RS256", jwt_public_key=str(path)), token).status_code == 200
    )
    one_line = pem(rsa_key).replace("\n", "\\n")
    assert (
        call(make_client(jwt_algorithm="RS256", jwt_public_key=one_line), token).status_code == 200
    )


def test_a_public_key_of_the_wrong_kind_is_a_configuration_error(settings, rsa_key, ec_key):
    with pytest.raises(ConfigurationError, match="TASKEXEC_JWT_PUBLIC_KEY"):
        create_app(settings.with_overrides(jwt_algorithm="RS256", jwt_public_key=pem(ec_key)))
    with pytest.raises(ConfigurationError, match="TASKEXEC_JWT_PUBLIC_KEY"):
        create_app(settings.with_overrides(jwt_algorithm="ES256", jwt_public_key=pem(rsa_key)))
    with pytest.raises(ConfigurationError, match="TASKEXEC_JWT_PUBLIC_KEY"):
        create_app(settings.with_overrides(jwt_algorithm="RS256", jwt_public_key="/no/such/file"))


# ---------------------------------------------------------------- JWKS


class JwksServer:
    """A JWKS document served from a thread on 127.0.0.1; counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def publish(self, kid: str, private_key: Any) -> None:
        algorithm = (
            jwt.algorithms.RSAAlgorithm
            if isinstance(private_key, rsa.RSAPrivateKey)
            else (jwt.algorithms.ECAlgorithm)
        )
        jwk = algorithm.to_jwk(private_key.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, "use": "sig"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def rs256(private_key: Any, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**overrides), private_key, algorithm="RS256", headers=headers)


def test_jwks_selects_the_key_by_kid(make_client, jwks, rsa_key, other_rsa_key):
    jwks.publish("k1", rsa_key)
    jwks.publish("k2", other_rsa_key)
    client = make_client(jwt_algorithm="RS256", jwt_jwks_url=jwks.url, jwt_secret="")
    assert call(client, rs256(rsa_key, "k1")).status_code == 200
    assert call(client, rs256(other_rsa_key, "k2")).status_code == 200
    assert jwks.fetches == 1  # cached
    assert_unauthorized(call(client, rs256(rsa_key, "k2")))  # signed by another key than kid's
    assert_unauthorized(call(client, rs256(rsa_key, "unknown")))
    assert_unauthorized(call(client, rs256(rsa_key, None)))
    assert_unauthorized(call(client, hs256_with(pem(rsa_key).encode(), claims(), kid="k1")))
    assert_unauthorized(call(client, unsigned(claims(), {"alg": "none", "kid": "k1"})))
    assert_unauthorized(call(client, rs256(rsa_key, "k1", exp=int(time.time()) - 600)))


def test_jwks_picks_up_a_rotated_key_but_unknown_kids_cannot_flood_the_idp(
    make_client, jwks, rsa_key, other_rsa_key
):
    jwks.publish("old", rsa_key)
    client = make_client(jwt_algorithm="RS256", jwt_jwks_url=jwks.url, jwt_secret="")
    assert call(client, rs256(rsa_key, "old")).status_code == 200
    jwks.publish("new", other_rsa_key)
    assert call(client, rs256(other_rsa_key, "new")).status_code == 200  # one refetch
    fetches = jwks.fetches
    for n in range(10):
        assert_unauthorized(call(client, rs256(rsa_key, f"made-up-{n}")))
    assert jwks.fetches == fetches  # refetches are throttled


def test_jwks_with_es256_ignores_keys_of_another_type(make_client, jwks, rsa_key, ec_key):
    jwks.publish("rsa", rsa_key)
    jwks.publish("ec", ec_key)
    client = make_client(jwt_algorithm="ES256", jwt_jwks_url=jwks.url, jwt_secret="")
    ok = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec"})
    assert call(client, ok).status_code == 200
    assert_unauthorized(call(client, rs256(rsa_key, "rsa")))
    es256_naming_the_rsa_key = jwt.encode(
        claims(), ec_key, algorithm="ES256", headers={"kid": "rsa"}
    )
    assert_unauthorized(call(client, es256_naming_the_rsa_key))


def test_an_unreachable_jwks_is_a_503_not_a_500(make_client, rsa_key):
    from cli.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    client = make_client(jwt_algorithm="RS256", jwt_jwks_url=url, jwt_secret="")
    response = call(client, rs256(rsa_key, "k1"))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    # Public views still answer, whatever credentials the request carries.
    health = client.get("/healthz", headers={"Authorization": f"Bearer {rs256(rsa_key, 'k1')}"})
    assert health.status_code == 200
