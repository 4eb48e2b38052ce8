"""Security policies -> the `PolicySet` of one workload's proxy. Pure: same inputs, same output.

Which policies apply follows Istio (authorization-policy and request_authentication references,
and pilot's `ShouldAttachPolicy`):

- a policy in the root namespace without a selector applies to every workload of the mesh;
- a policy in another namespace without a selector applies to every workload of that namespace;
- a selector picks workloads by their labels in the policy's namespace; a root-namespace policy
  with a selector picks matching workloads in every namespace. An empty `matchLabels` selects
  like no selector (Istio: the empty label set is a subset of every workload's labels).

The compiled data goes through `PolicySet`'s own reader before it is returned, so the proxy never
receives a policy it would refuse; its errors are translated back to the YAML field path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from pydantic.alias_generators import to_camel

from plait.config.authn_resources import JWTRule, RequestAuthentication
from plait.config.policy import (
    DEFAULT_JWKS_TIMEOUT_MS,
    AuthzCondition,
    AuthzOperation,
    AuthzSource,
    CompiledAuthzPolicy,
    JwtRule,
    PolicyError,
    PolicySet,
)
from plait.config.resources import AuthorizationPolicy, PeerAuthentication, WorkloadSelector

__all__ = ["DEFAULT_ROOT_NAMESPACE", "PolicyCompileError", "compile_mtls_mode", "compile_policies"]

# Istio's default root namespace (MeshConfig.rootNamespace): policies there are mesh-wide.
DEFAULT_ROOT_NAMESPACE = "istio-system"


class PolicyCompileError(ValueError):
    """A policy the proxy cannot enforce; the message names the resource and the field."""


def compile_policies(
    resources: Iterable[object],
    workload_labels: Mapping[str, str],
    namespace: str,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> PolicySet:
    """The AuthorizationPolicies and RequestAuthentication rules that select this workload."""

    def applies(meta_namespace: str, selector: WorkloadSelector | None) -> bool:
        if meta_namespace not in (namespace, root_namespace):
            return False
        wanted = selector.match_labels if selector is not None else {}
        return all(workload_labels.get(k) == v for k, v in wanted.items())

    def order(x: AuthorizationPolicy | RequestAuthentication) -> tuple[str, str]:
        return (x.metadata.namespace, x.metadata.name)

    authz = sorted(
        (
            x
            for x in resources
            if isinstance(x, AuthorizationPolicy) and applies(x.metadata.namespace, x.spec.selector)
        ),
        key=order,
    )
    authn = sorted(
        (
            x
            for x in resources
            if isinstance(x, RequestAuthentication)
            and applies(x.metadata.namespace, x.spec.selector)
        ),
        key=order,
    )
    return PolicySet(
        authorization=tuple(_authorization(p) for p in authz),
        jwt_rules=tuple(
            _jwt_rule(ra, i, rule) for ra in authn for i, rule in enumerate(ra.spec.jwt_rules)
        ),
    )


def _authorization(policy: AuthorizationPolicy) -> CompiledAuthzPolicy:
    where = f"AuthorizationPolicy {policy.metadata.namespace}/{policy.metadata.name}"
    spec = policy.spec
    if spec.action == "CUSTOM":
        raise PolicyCompileError(
            f"{where}: spec.action: CUSTOM is not supported (plait has no external authorizer)"
        )
    if spec.provider is not None:
        raise PolicyCompileError(f"{where}: spec.provider: only valid with action CUSTOM")
    data = {
        "name": policy.metadata.name,
        "namespace": policy.metadata.namespace,
        "action": spec.action,
        "rules": [
            {
                "from": [_lists(f.source.model_dump()) for f in rule.from_],
                "to": [_lists(t.operation.model_dump()) for t in rule.to],
                "when": [_lists(c.model_dump()) for c in rule.when],
            }
            for rule in spec.rules
        ],
    }
    return _read(CompiledAuthzPolicy.from_dict, data, where)


def _jwt_rule(policy: RequestAuthentication, index: int, rule: JWTRule) -> JwtRule:
    key = f"{policy.metadata.namespace}/{policy.metadata.name}"
    data: dict[str, Any] = {
        "issuer": rule.issuer,
        "audiences": list(rule.audiences),
        "jwks": rule.jwks or "",
        "jwks_uri": rule.jwks_uri or "",
        "jwks_timeout_ms": rule.timeout or DEFAULT_JWKS_TIMEOUT_MS,
        "from_cookies": list(rule.from_cookies),
        "forward_original_token": rule.forward_original_token,
        "output_payload_to_header": rule.output_payload_to_header or "",
        "output_claim_to_headers": [c.model_dump() for c in rule.output_claim_to_headers],
        "policy": key,
    }
    # Envoy's default locations (Authorization: Bearer, ?access_token=) apply only when the rule
    # names none; naming any location replaces them.
    if rule.from_headers or rule.from_params or rule.from_cookies:
        data["from_headers"] = [h.model_dump() for h in rule.from_headers]
        data["from_params"] = list(rule.from_params)
    where = f"RequestAuthentication {key}"
    return _read(JwtRule.from_dict, data, where, f"spec.jwtRules[{index}]")


def _lists(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A model dump in the compiled shape: tuples as lists, empty fields left out."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if v}


def _read(reader: Any, data: dict[str, Any], where: str, path: str = "spec") -> Any:
    try:
        return reader(data, path)
    except PolicyError as e:
        field, _, reason = str(e).partition(": ")
        raise PolicyCompileError(f"{where}: {_yaml_path(field)}: {_yaml_names(reason)}") from None


# The compiled form's snake_case field names, and how the YAML spells them.
_YAML_NAMES = {
    f.name: "timeout" if f.name == "jwks_timeout_ms" else to_camel(f.name)
    for cls in (AuthzSource, AuthzOperation, AuthzCondition, JwtRule)
    for f in fields(cls)
}


def _yaml_names(text: str) -> str:
    return re.sub(r"\b[a-z]+(_[a-z]+)+\b", lambda m: _YAML_NAMES.get(m[0], m[0]), text)


def _yaml_path(path: str) -> str:
    """`spec.rules[0].from[1].not_ip_blocks[0]` -> `spec.rules[0].from[1].source.notIpBlocks[0]`."""
    path = re.sub(r"\.from\[(\d+)\]\.", r".from[\1].source.", path)
    path = re.sub(r"\.to\[(\d+)\]\.", r".to[\1].operation.", path)
    return _yaml_names(path)


MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE")


def compile_mtls_mode(
    resources: Iterable[object],
    workload_labels: Mapping[str, str],
    namespace: str,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> str:
    """The inbound mTLS mode of one workload (Istio's PeerAuthentication precedence: a
    selecting policy in its namespace, else its namespace's policy without selector, else the
    mesh-wide one in the root namespace; UNSET inherits). plait's default is STRICT: traffic
    between proxies is encrypted unless someone says otherwise."""
    workload: str = "UNSET"
    namespace_wide: str = "UNSET"
    mesh_wide: str = "UNSET"
    for x in sorted(
        (x for x in resources if isinstance(x, PeerAuthentication)),
        key=lambda p: (p.metadata.namespace, p.metadata.name),
    ):
        mode: str = x.spec.mtls.mode if x.spec.mtls is not None else "UNSET"
        selector = x.spec.selector.match_labels if x.spec.selector is not None else None
        if x.metadata.namespace == namespace and selector:
            if (
                all(workload_labels.get(k) == v for k, v in selector.items())
                and workload == "UNSET"
            ):
                workload = mode
        elif x.metadata.namespace == namespace and not selector:
            namespace_wide = mode if namespace_wide == "UNSET" else namespace_wide
        elif x.metadata.namespace == root_namespace and not selector:
            mesh_wide = mode if mesh_wide == "UNSET" else mesh_wide
    for mode in (workload, namespace_wide, mesh_wide):
        if mode != "UNSET":
            return mode
    return "STRICT"
