"""RequestAuthentication models; they live in `plait.config.resources` with the other kinds."""

from plait.config.resources import ClaimToHeader, JWTHeader, JWTRule, RequestAuthentication

__all__ = ["ClaimToHeader", "JWTHeader", "JWTRule", "RequestAuthentication"]
