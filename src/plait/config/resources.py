"""User resources: the standard YAML shapes as strict pydantic models, with errors that name a line.

Every kind is `apiVersion`, `kind`, `metadata`, `spec`, spelled as in Kubernetes, the Gateway API
and Istio, so existing YAML carries over. Unknown fields and wrong types are errors (`"80"` is not
a port); nothing is silently ignored. Lists are held as tuples and durations as milliseconds.
Validation errors become `ConfigError`s that name the file, the line and the field path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.policy import JWKS_SCHEMES, check_jwks
from plait.config.yamlio import Document, FieldPath, load_documents

__all__ = [
    "KINDS",
    "AuthorizationPolicy",
    "DNSLabel",
    "DestinationRule",
    "Duration",
    "GRPCBackendRef",
    "GRPCMethodMatch",
    "GRPCRoute",
    "GRPCRouteFilter",
    "GRPCRouteMatch",
    "GRPCRouteRule",
    "Gateway",
    "HTTPBackendRef",
    "HTTPRoute",
    "HTTPRouteMatch",
    "HTTPRouteRule",
    "HTTPRouteTimeouts",
    "Items",
    "Labels",
    "ObjectMeta",
    "ParentReference",
    "PeerAuthentication",
    "Port",
    "Resource",
    "Service",
    "SomeItems",
    "StrictModel",
    "Workload",
    "parse_resource",
    "parse_resources",
    "selects",
    "validate",
]

GATEWAY_API = "gateway.networking.k8s.io/v1"
GATEWAY_GROUP = "gateway.networking.k8s.io"

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class StrictModel(BaseModel):
    """Strict, frozen, camelCase in YAML, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, alias_generator=to_camel)


def _non_empty(items: tuple[T, ...]) -> tuple[T, ...]:
    if not items:
        raise ValueError("must not be empty")
    return items


# YAML gives lists; hold them as immutable tuples (the items themselves stay strict).
Items = Annotated[tuple[T, ...], Field(strict=False)]
# Checked after the items, so one bad item is not also reported as an empty list.
SomeItems = Annotated[tuple[T, ...], Field(strict=False), AfterValidator(_non_empty)]
Labels = dict[str, str]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# GEP-2257: up to four <1-5 digits><unit> parts; Istio (Go durations) also allows fractions.
_GATEWAY_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_ISTIO_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(h|m|s|ms))+")
_DURATION_PART = re.compile(r"([0-9.]+)(ms|h|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def _hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value.lower()):
        raise ValueError(f"{value!r} is not a hostname (optionally with a leading '*.')")
    return value


def _duration(pattern: re.Pattern[str], example: str) -> Any:
    def parse(value: object) -> int:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"expected a duration like {example}, got {value!r}")
        ms = sum(float(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value))
        return round(ms)

    return BeforeValidator(parse)


DNSLabel = Annotated[str, AfterValidator(_dns_label)]
Hostname = Annotated[str, AfterValidator(_hostname)]
Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=0)]
Percent = Annotated[int, Field(ge=0, le=100)]
Duration = Annotated[int, _duration(_GATEWAY_DURATION, "'10s', '500ms' or '1h30m'")]  # ms
IstioDuration = Annotated[int, _duration(_ISTIO_DURATION, "'10s', '1.5s' or '100ms'")]  # ms


class ObjectMeta(StrictModel):
    name: DNSLabel
    namespace: DNSLabel = "default"
    labels: Labels = Field(default_factory=dict)
    annotations: Labels = Field(default_factory=dict)


class _Resource(StrictModel):
    api_version: str
    kind: str
    metadata: ObjectMeta


# --- plait.dev/v1 -------------------------------------------------------------------------------


class ServicePort(StrictModel):
    name: DNSLabel | None = None
    port: Port
    target_port: Port | DNSLabel | None = None  # a number, or the name of a workload port
    protocol: Literal["http", "http2", "grpc", "tcp"] = "http"


class ServiceSpec(StrictModel):
    selector: Labels = Field(default_factory=dict)  # empty selects nothing, as in Kubernetes
    ports: SomeItems[ServicePort]

    @model_validator(mode="after")
    def _unique_ports(self) -> ServiceSpec:
        numbers = [p.port for p in self.ports]
        names = [p.name for p in self.ports if p.name is not None]
        if len(set(numbers)) != len(numbers) or len(set(names)) != len(names):
            raise ValueError("port numbers and port names must be unique")
        return self


class Service(_Resource):
    api_version: Literal["plait.dev/v1"]
    kind: Literal["Service"]
    spec: ServiceSpec


class WorkloadSpec(StrictModel):
    address: str = Field(min_length=1)
    port: Port
    labels: Labels = Field(default_factory=dict)
    service_account: str | None = None


class Workload(_Resource):
    """A static endpoint without a proxy (a database, a legacy host)."""

    api_version: Literal["plait.dev/v1"]
    kind: Literal["Workload"]
    spec: WorkloadSpec


# --- gateway.networking.k8s.io/v1: HTTPRoute -----------------------------------------------------


class ParentReference(StrictModel):
    group: str | None = None
    kind: Literal["Service", "Gateway"] = "Gateway"  # the spec's default; GAMMA writes Service
    name: DNSLabel
    namespace: DNSLabel | None = None
    port: Port | None = None
    section_name: str | None = None

    @model_validator(mode="after")
    def _group_fits_kind(self) -> ParentReference:
        expected = GATEWAY_GROUP if self.kind == "Gateway" else ""
        if self.group not in (None, expected):
            raise ValueError(f"the group of a {self.kind} is {expected!r}, not {self.group!r}")
        return self


class HTTPPathMatch(StrictModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)

    @model_validator(mode="after")
    def _absolute(self) -> HTTPPathMatch:
        if self.type != "RegularExpression" and not self.value.startswith("/"):
            raise ValueError(f"an {self.type} path must start with '/'")
        return self


class HTTPHeaderMatch(StrictModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1)
    value: str


HTTPQueryParamMatch = HTTPHeaderMatch  # the same shape in the spec
HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(StrictModel):
    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)  # spec default: PathPrefix "/"
    headers: Items[HTTPHeaderMatch] = ()
    query_params: Items[HTTPQueryParamMatch] = ()
    method: HTTPMethod | None = None


class HTTPHeader(StrictModel):
    name: str = Field(min_length=1)
    value: str


class HTTPHeaderFilter(StrictModel):
    set: Items[HTTPHeader] = ()
    add: Items[HTTPHeader] = ()
    remove: Items[str] = ()


class HTTPPathModifier(StrictModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None

    @model_validator(mode="after")
    def _value_for_type(self) -> HTTPPathModifier:
        full = self.type == "ReplaceFullPath"
        if (self.replace_full_path is None) == full or (self.replace_prefix_match is None) != full:
            field = "replaceFullPath" if full else "replacePrefixMatch"
            raise ValueError(f"type {self.type} takes `{field}` and not the other field")
        return self


class HTTPRequestRedirectFilter(StrictModel):
    scheme: Literal["http", "https"] | None = None
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None
    port: Port | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(StrictModel):
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None


class BackendObjectReference(StrictModel):
    group: Literal[""] = ""  # the core group: only Services are backends
    kind: Literal["Service"] = "Service"
    name: DNSLabel
    namespace: DNSLabel | None = None  # default: the route's namespace
    port: Port | None = None


class Fraction(StrictModel):
    numerator: Count
    denominator: Annotated[int, Field(ge=1)] = 100


class HTTPRequestMirrorFilter(StrictModel):
    backend_ref: BackendObjectReference
    percent: Percent | None = None
    fraction: Fraction | None = None


class LocalObjectReference(StrictModel):
    group: str
    kind: str
    name: str


_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "ExtensionRef": "extension_ref",
}


class HTTPRouteFilter(StrictModel):
    """One filter: `type` names the one field that configures it, as in the Gateway API."""

    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "RequestRedirect",
        "URLRewrite",
        "ExtensionRef",
    ]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _one_config(self) -> HTTPRouteFilter:
        wanted = _FILTER_FIELDS[self.type]
        present = [f for f in _FILTER_FIELDS.values() if getattr(self, f) is not None]
        if present != [wanted]:
            raise ValueError(f"a {self.type} filter sets `{to_camel(wanted)}` and no other")
        return self


class HTTPBackendRef(BackendObjectReference):
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    filters: Items[HTTPRouteFilter] = ()


class HTTPRouteTimeouts(StrictModel):
    """Milliseconds; 0 means no timeout (GEP-1742)."""

    request: Duration | None = None
    backend_request: Duration | None = None

    @model_validator(mode="after")
    def _backend_within_request(self) -> HTTPRouteTimeouts:
        if self.request and self.backend_request and self.backend_request > self.request:
            raise ValueError("backendRequest must not be longer than request")
        return self


class HTTPRouteRetry(StrictModel):
    """Gateway API retries (GEP-1731: codes, attempts, backoff), plus plait's extensions in
    Istio's terms: `retryOn` (connect-failure, 5xx, gateway-error, reset, ...) and
    `perTryTimeout`. `attempts` counts retries after the first try, as Istio's does."""

    codes: Items[Annotated[int, Field(ge=400, le=599)]] = ()
    attempts: int | None = Field(default=None, ge=0, le=10)
    backoff: Duration | None = None
    retry_on: str | None = None
    per_try_timeout: Duration | None = None


class HTTPRouteRule(StrictModel):
    name: str | None = None
    matches: Items[HTTPRouteMatch] = Field(default=(), validate_default=True)
    filters: Items[HTTPRouteFilter] = ()
    backend_refs: Items[HTTPBackendRef] = ()
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None

    @field_validator("matches")
    @classmethod
    def _match_everything_by_default(
        cls, matches: tuple[HTTPRouteMatch, ...]
    ) -> tuple[HTTPRouteMatch, ...]:
        return matches or (HTTPRouteMatch(),)  # the spec: no matches is PathPrefix "/"

    @model_validator(mode="after")
    def _redirect_or_rewrite(self) -> HTTPRouteRule:
        types = {f.type for f in self.filters}
        if {"RequestRedirect", "URLRewrite"} <= types:
            raise ValueError("a rule cannot both redirect and rewrite")
        return self


class HTTPRouteSpec(StrictModel):
    # The spec allows none, but a route without a parent never applies: say so instead.
    parent_refs: SomeItems[ParentReference]
    hostnames: Items[Hostname] = ()
    rules: SomeItems[HTTPRouteRule]


class HTTPRoute(_Resource):
    api_version: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["HTTPRoute"]
    spec: HTTPRouteSpec


# --- gateway.networking.k8s.io/v1: GRPCRoute -----------------------------------------------------
# The GRPCRoute spec's patterns for Exact names: a dotted proto package + service, a method.
_GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


class GRPCMethodMatch(StrictModel):
    """`service` is the proto's `package.Service`, `method` the RPC; the request path is
    `/service/method`. Omitting one matches every value of it."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = Field(default=None, min_length=1, max_length=1024)
    method: str | None = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _names(self) -> GRPCMethodMatch:
        if self.service is None and self.method is None:
            raise ValueError("one or both of service and method must be set")
        if self.type == "Exact":
            if self.service is not None and not _GRPC_SERVICE.fullmatch(self.service):
                raise ValueError(
                    f"service {self.service!r} is not a gRPC service name (package.Service)"
                )
            if self.method is not None and not _GRPC_METHOD.fullmatch(self.method):
                raise ValueError(f"method {self.method!r} is not a gRPC method name")
        return self


class GRPCRouteMatch(StrictModel):
    method: GRPCMethodMatch | None = None  # none: every method of every service
    headers: Items[HTTPHeaderMatch] = ()  # GRPCHeaderMatch has HTTPHeaderMatch's shape


_GRPC_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "ExtensionRef": "extension_ref",
}


class GRPCRouteFilter(StrictModel):
    """One filter of the GRPCRoute spec's four types (no redirect or rewrite for gRPC)."""

    type: Literal[
        "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"
    ]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    extension_ref: LocalObjectReference | None = None
    # Read like HTTPRouteFilter's by the compiler: never set for gRPC.
    request_redirect: ClassVar[None] = None
    url_rewrite: ClassVar[None] = None

    @model_validator(mode="after")
    def _one_config(self) -> GRPCRouteFilter:
        wanted = _GRPC_FILTER_FIELDS[self.type]
        present = [f for f in _GRPC_FILTER_FIELDS.values() if getattr(self, f) is not None]
        if present != [wanted]:
            raise ValueError(f"a {self.type} filter sets `{to_camel(wanted)}` and no other")
        return self


class GRPCBackendRef(BackendObjectReference):
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    filters: Items[GRPCRouteFilter] = ()


class GRPCRouteRule(StrictModel):
    name: str | None = None
    matches: Items[GRPCRouteMatch] = ()  # none: every call
    filters: Items[GRPCRouteFilter] = ()
    backend_refs: Items[GRPCBackendRef] = ()
    # plait's extension, as on HTTPRoute rules; retryOn takes gRPC's `unavailable`, ...
    retry: HTTPRouteRetry | None = None


class GRPCRouteSpec(StrictModel):
    parent_refs: SomeItems[ParentReference]  # as HTTPRoute's: a route must attach somewhere
    hostnames: Items[Hostname] = ()
    rules: SomeItems[GRPCRouteRule]


class GRPCRoute(_Resource):
    """Routing for gRPC callers, matching on service and method (GAMMA: parent a Service)."""

    api_version: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["GRPCRoute"]
    spec: GRPCRouteSpec


# --- gateway.networking.k8s.io/v1: Gateway -------------------------------------------------------


class LabelSelectorRequirement(StrictModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Items[str] = ()


class LabelSelector(StrictModel):
    match_labels: Labels = Field(default_factory=dict)
    match_expressions: Items[LabelSelectorRequirement] = ()


class RouteNamespaces(StrictModel):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(StrictModel):
    group: str | None = None
    kind: str


class AllowedRoutes(StrictModel):
    namespaces: RouteNamespaces | None = None
    kinds: Items[RouteGroupKind] = ()


class SecretObjectReference(StrictModel):
    group: str = ""
    kind: str = "Secret"
    name: str
    namespace: DNSLabel | None = None


class GatewayTLSConfig(StrictModel):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: Items[SecretObjectReference] = ()
    options: Labels = Field(default_factory=dict)


class Listener(StrictModel):
    name: DNSLabel
    hostname: Hostname | None = None
    port: Port
    protocol: Literal["HTTP", "HTTPS", "TCP"]
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes | None = None


class GatewaySpec(StrictModel):
    gateway_class_name: str = Field(min_length=1)
    listeners: SomeItems[Listener]

    @model_validator(mode="after")
    def _unique_listeners(self) -> GatewaySpec:
        names = [x.name for x in self.listeners]
        if len(set(names)) != len(names):
            raise ValueError("listener names must be unique")
        return self


class Gateway(_Resource):
    api_version: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["Gateway"]
    spec: GatewaySpec


# --- networking.istio.io/v1: DestinationRule ----------------------------------------------------


class WorkloadSelector(StrictModel):
    match_labels: Labels = Field(default_factory=dict)


class HTTPCookie(StrictModel):
    name: str
    path: str | None = None
    ttl: IstioDuration | None = None


class RingHash(StrictModel):
    minimum_ring_size: Count | None = None


class Maglev(StrictModel):
    table_size: Count | None = None


class ConsistentHashLB(StrictModel):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None


class LoadBalancerSettings(StrictModel):
    simple: (
        Literal[
            "UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN"
        ]
        | None
    ) = None
    consistent_hash: ConsistentHashLB | None = None


class TCPSettings(StrictModel):
    max_connections: Count | None = None
    connect_timeout: IstioDuration | None = None
    idle_timeout: IstioDuration | None = None
    max_connection_duration: IstioDuration | None = None


class HTTPSettings(StrictModel):
    http1_max_pending_requests: Count | None = None
    http2_max_requests: Count | None = None
    max_requests_per_connection: Count | None = None
    max_retries: Count | None = None
    idle_timeout: IstioDuration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: Count | None = None


class ConnectionPoolSettings(StrictModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(StrictModel):
    consecutive_5xx_errors: Count | None = Field(default=None, alias="consecutive5xxErrors")
    consecutive_gateway_errors: Count | None = None
    interval: IstioDuration | None = None
    base_ejection_time: IstioDuration | None = None
    max_ejection_percent: Percent | None = None
    min_health_percent: Percent | None = None


class ClientTLSSettings(StrictModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: Items[str] = ()
    sni: str | None = None
    insecure_skip_verify: bool | None = None


class TrafficPolicy(StrictModel):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class Subset(StrictModel):
    name: str = Field(min_length=1)
    labels: Labels = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(StrictModel):
    host: str = Field(min_length=1)
    traffic_policy: TrafficPolicy | None = None
    subsets: Items[Subset] = ()
    export_to: Items[str] = ()
    workload_selector: WorkloadSelector | None = None


class DestinationRule(_Resource):
    api_version: Literal["networking.istio.io/v1"]
    kind: Literal["DestinationRule"]
    spec: DestinationRuleSpec


# --- security.istio.io/v1 ------------------------------------------------------------------------


class Source(StrictModel):
    principals: Items[str] = ()
    not_principals: Items[str] = ()
    request_principals: Items[str] = ()
    not_request_principals: Items[str] = ()
    namespaces: Items[str] = ()
    not_namespaces: Items[str] = ()
    ip_blocks: Items[str] = ()
    not_ip_blocks: Items[str] = ()
    remote_ip_blocks: Items[str] = ()
    not_remote_ip_blocks: Items[str] = ()


class Operation(StrictModel):
    hosts: Items[str] = ()
    not_hosts: Items[str] = ()
    ports: Items[str] = ()  # strings in Istio's API
    not_ports: Items[str] = ()
    methods: Items[str] = ()
    not_methods: Items[str] = ()
    paths: Items[str] = ()
    not_paths: Items[str] = ()


class RuleFrom(StrictModel):
    source: Source


class RuleTo(StrictModel):
    operation: Operation


class Condition(StrictModel):
    key: str = Field(min_length=1)
    values: Items[str] = ()
    not_values: Items[str] = ()


class AuthorizationRule(StrictModel):
    from_: Items[RuleFrom] = Field(default=(), alias="from")
    to: Items[RuleTo] = ()
    when: Items[Condition] = ()


class ExtensionProvider(StrictModel):
    name: str


class AuthorizationPolicySpec(StrictModel):
    """Istio semantics: ALLOW with no rules allows nothing; `rules: [{}]` allows everything."""

    selector: WorkloadSelector | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None
    rules: Items[AuthorizationRule] = ()


class AuthorizationPolicy(_Resource):
    api_version: Literal["security.istio.io/v1"]
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)


class PeerMTLS(StrictModel):
    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] = "UNSET"


class PeerAuthenticationSpec(StrictModel):
    selector: WorkloadSelector | None = None
    mtls: PeerMTLS | None = None
    port_level_mtls: dict[Port, PeerMTLS] = Field(default_factory=dict)


class PeerAuthentication(_Resource):
    api_version: Literal["security.istio.io/v1"]
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)


# RequestAuthentication: the JWT rules a workload accepts. Keys are inline (`jwks`) or fetched
# by the proxy from `jwksUri`; OpenID discovery is not supported, so one of the two is required.


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
        if self.jwks_uri is not None and not self.jwks_uri.startswith(JWKS_SCHEMES):
            raise ValueError("jwksUri must be an http://, https:// or file:// URL")
        if self.jwks is not None:
            check_jwks(self.jwks)
        return self


class RequestAuthenticationSpec(StrictModel):
    selector: WorkloadSelector | None = None
    jwt_rules: Items[JWTRule] = ()


class RequestAuthentication(_Resource):
    api_version: Literal["security.istio.io/v1"]
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)


# --- registry and parsing ------------------------------------------------------------------------

Resource = (
    Service
    | Workload
    | HTTPRoute
    | GRPCRoute
    | Gateway
    | DestinationRule
    | AuthorizationPolicy
    | PeerAuthentication
    | RequestAuthentication
)

KINDS: dict[tuple[str, str], type[Resource]] = {
    ("plait.dev/v1", "Service"): Service,
    ("plait.dev/v1", "Workload"): Workload,
    (GATEWAY_API, "HTTPRoute"): HTTPRoute,
    (GATEWAY_API, "GRPCRoute"): GRPCRoute,
    (GATEWAY_API, "Gateway"): Gateway,
    ("networking.istio.io/v1", "DestinationRule"): DestinationRule,
    ("security.istio.io/v1", "AuthorizationPolicy"): AuthorizationPolicy,
    ("security.istio.io/v1", "PeerAuthentication"): PeerAuthentication,
    ("security.istio.io/v1", "RequestAuthentication"): RequestAuthentication,
}


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes selection: every selector label present; an empty selector selects nothing."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def parse_resources(text: str, filename: str, *, namespace: str = "default") -> list[Resource]:
    """Every resource of a (multi-document) YAML file; all documents' errors are reported."""
    resources: list[Resource] = []
    errors: list[ConfigError | ConfigErrors] = []
    for doc in load_documents(text, filename):
        try:
            resources.append(parse_resource(doc, filename, namespace=namespace))
        except (ConfigError, ConfigErrors) as e:
            errors.append(e)
    ConfigErrors.raise_if_any(errors)
    return resources


def parse_resource(doc: Document, filename: str, *, namespace: str = "default") -> Resource:
    """One document as its kind's model; `namespace` fills in a missing `metadata.namespace`."""
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error(filename, (), "expected a mapping with apiVersion, kind, metadata, spec")
    model = _model_for(doc, filename)
    meta = data.get("metadata")
    if isinstance(meta, dict) and "namespace" not in meta:
        data = {**data, "metadata": {**meta, "namespace": namespace}}
    return validate(model, doc, filename, data)


def _model_for(doc: Document, filename: str) -> type[Resource]:
    api_version, kind = doc.data.get("apiVersion"), doc.data.get("kind")
    for key, value in (("apiVersion", api_version), ("kind", kind)):
        if value is None:
            raise doc.error(filename, (key,), "required field is missing")
        if not isinstance(value, str):
            raise doc.error(filename, (key,), "Input should be a valid string")
    model = KINDS.get((api_version, kind))
    if model is None:
        versions = [v for v, k in KINDS if k == kind]
        if versions:
            raise doc.error(filename, ("apiVersion",), f"expected {versions[0]} for kind {kind}")
        known = ", ".join(f"{k} ({v})" for v, k in KINDS)
        raise doc.error(filename, ("kind",), f"unknown kind {kind!r}; known: {known}")
    return model


def validate(model: type[M], doc: Document, filename: str, data: Any = None) -> M:
    """Validate `data` (default: the document's) with `model`; errors point into the document."""
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as e:
        errors: dict[FieldPath, ConfigError] = {}
        for err in e.errors():
            path = _data_path(err["loc"], doc.data, missing=err["type"] == "missing")
            # One error per field: a failed union reports each branch; the first is enough.
            errors.setdefault(path, doc.error(filename, path, _reason(err)))
        ordered = sorted(errors.values(), key=lambda x: x.line or 0)
        raise (ordered[0] if len(ordered) == 1 else ConfigErrors(ordered)) from None


def _data_path(loc: tuple[str | int, ...], data: Any, *, missing: bool) -> FieldPath:
    """Pydantic's `loc` cut to the keys that exist in the YAML, plus a missing field's name.

    `loc` also holds pydantic's own labels (union branches such as `int`, `[key]`); they are
    not in the data, so walking the data drops them.
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        found = isinstance(node, dict) and part in node
        found = found or isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not found:
            if missing:
                path.append(part)
            break
        node = node[part]
        path.append(part)
    return tuple(path)


def _reason(err: ErrorDetails) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "value_error":  # our validators' messages, without pydantic's prefix
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return err["msg"]


# plait's own extension kinds live in their modules, which import the shared parts above and
# add themselves to KINDS at their end. A plain module import here (no `from`) works whichever
# side is imported first, so there is no import cycle to trip on.
import plait.config.fault_resources  # noqa: E402, F401
import plait.config.traffic_resources  # noqa: E402, F401
