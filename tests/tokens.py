"""JWTs for the tests: RSA (RS256) and EC P-256 (ES256) key pairs made once per test run, the
JWKS a real jwt_authn verifies them with, and tokens signed here (PyJWT) - good ones, expired
ones, and ones signed with a key the JWKS does not have."""

from __future__ import annotations

import functools
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://sso.graysplit.test"
AUDIENCE = "rag-assistant"


@functools.cache
def keys() -> dict[str, object]:
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        # Same algorithms, keys nobody published: their signatures must not verify.
        "RS256-wrong": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256-wrong": ec.generate_private_key(ec.SECP256R1()),
    }


def jwks() -> str:
    """The JWKS of the two published keys (what jwt_authn's local_jwks holds)."""
    out = []
    for alg, kid in (("RS256", "rsa-1"), ("ES256", "ec-1")):
        algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algo.to_jwk(keys()[alg].public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        out.append(jwk)
    return json.dumps({"keys": out})


def token(claims: dict, *, alg: str = "RS256", expired: bool = False, wrong_key: bool = False) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now - 60,
               "exp": now - 3600 if expired else now + 3600, **claims}  # claims may set iss, aud; expired: past jwt_authn's 60 s skew
    key = keys()[f"{alg}-wrong" if wrong_key else alg]
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": "rsa-1" if alg == "RS256" else "ec-1"})


def jwt_authn_filter() -> dict:
    """Envoy's jwt_authn as Istio's RequestAuthentication configures it (the verified payload in
    dynamic metadata under `payload`): a request with a bad token is refused (401), one without
    a token passes with no claims; under /lenient/ a bad token passes too, with no claims."""
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": jwks()},
        "forward": True,
        "payload_in_metadata": "payload",
    }
    any_of = lambda last: {"requires_any": {"requirements": [{"provider_name": "sso"}, last]}}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"sso": provider},
            "rules": [
                {"match": {"prefix": "/lenient/"}, "requires": any_of({"allow_missing_or_failed": {}})},
                {"match": {"prefix": "/"}, "requires": any_of({"allow_missing": {}})},
            ],
        },
    }
