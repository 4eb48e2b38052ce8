"""Plain counters per listener: attribute increments cost ~30 ns, far below a registry's."""

from __future__ import annotations

__all__ = ["ListenerStats"]


class ListenerStats:
    """Counters of one listener, named after Envoy's (`downstream_rq_total`, ...)."""

    def __init__(self) -> None:
        self.cx_total = 0
        self.rq_total = 0
        self.rq_1xx = 0
        self.rq_2xx = 0
        self.rq_3xx = 0
        self.rq_4xx = 0
        self.rq_5xx = 0
        self.downstream_protocol_errors = 0
        self.downstream_rq_timeout = 0
        self.upstream_cx_connect_fail = 0
        self.upstream_rq_retry = 0
        self.upstream_rq_timeout = 0
        self.flags: dict[str, int] = {}
        self.events: dict[str, int] = {}  # named occurrences: mirror_sent, mirror_failed, ...

    def record_status(self, status: int, flags: str) -> None:
        klass = status // 100
        if klass == 2:
            self.rq_2xx += 1
        elif klass == 5:
            self.rq_5xx += 1
        elif klass == 4:
            self.rq_4xx += 1
        elif klass == 3:
            self.rq_3xx += 1
        elif klass == 1:
            self.rq_1xx += 1
        if flags:
            self.flags[flags] = self.flags.get(flags, 0) + 1

    def as_dict(self, active_connections: int) -> dict[str, int]:
        out = {
            "downstream_cx_total": self.cx_total,
            "downstream_cx_active": active_connections,
            "downstream_rq_total": self.rq_total,
            "downstream_rq_1xx": self.rq_1xx,
            "downstream_rq_2xx": self.rq_2xx,
            "downstream_rq_3xx": self.rq_3xx,
            "downstream_rq_4xx": self.rq_4xx,
            "downstream_rq_5xx": self.rq_5xx,
            "downstream_cx_protocol_error": self.downstream_protocol_errors,
            "downstream_rq_header_timeout": self.downstream_rq_timeout,
            "upstream_cx_connect_fail": self.upstream_cx_connect_fail,
            "upstream_rq_retry": self.upstream_rq_retry,
            "upstream_rq_timeout": self.upstream_rq_timeout,
        }
        for flag, count in sorted(self.flags.items()):
            out[f"response_flags.{flag}"] = count
        out.update(sorted(self.events.items()))
        return out
