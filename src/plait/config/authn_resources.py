"""RequestAuthentication (security.istio.io/v1): the JWT rules a workload accepts, as Istio spells them.

Strict like every resource model (unknown fields are errors). Keys are inline (`jwks`) or fetched
by the proxy from `jwksUri`; OpenID discovery from the issuer is not supported, so one of the two
is required.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from plait.config.policy import check_jwks
from plait.config.resources import (
    IstioDuration,
    Items,
    ObjectMeta,
    StrictModel,
    WorkloadSelector,
)

__all__ = ["ClaimToHeader", "JWTHeader", "JWTRule", "RequestAuthentication"]


class JWTHeader(StrictModel):
    name: str = Field(min_length=1)
    prefix: str = ""


class ClaimToHeader(StrictModel):
    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)


class JWTRule(StrictModel):
    issuer: str = Field(min_length=1)
    audiences: Items[str] = ()
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: Items[JWTHeader] = ()
    from_params: Items[str] = ()
    from_cookies: Items[str] = ()
    output_payload_to_header: str | None = None
    forward_original_token: bool = False
    output_claim_to_headers: Items[ClaimToHeader] = ()
    timeout: IstioDuration | None = None  # ms, for fetching jwksUri

    @model_validator(mode="after")
    def _one_key_source(self) -> JWTRule:
        if (self.jwks is None) == (self.jwks_uri is None):
            raise ValueError(
                "set exactly one of jwks and jwksUri (OpenID discovery is unsupported)"
            )
        if self.jwks_uri is not None and not self.jwks_uri.startswith(("https://", "http://")):
            raise ValueError("jwksUri must be an http:// or https:// URL")
        if self.jwks is not None:
            check_jwks(self.jwks)
        return self


class RequestAuthenticationSpec(StrictModel):
    selector: WorkloadSelector | None = None
    jwt_rules: Items[JWTRule] = ()


class RequestAuthentication(StrictModel):
    api_version: Literal["security.istio.io/v1"]
    kind: Literal["RequestAuthentication"]
    metadata: ObjectMeta
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)
