"""`plait capture`: the rules it writes (pure) and the specs it refuses."""

from __future__ import annotations

import pytest

from plait.local.capture import (
    CaptureError,
    CaptureSpec,
    output_rules,
    prerouting_rules,
    restore_script,
)


def test_default_captures_only_the_vip_range_and_spares_the_proxy_and_localhost() -> None:
    rules = output_rules(CaptureSpec(proxy_mark=1337))
    assert rules == [
        "-m mark --mark 1337 -j RETURN",
        "-d 127.0.0.0/8 -j RETURN",
        "-p tcp --dport 53 -j RETURN",
        "-d 10.96.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
    ]


def test_exclusions_come_before_the_redirects() -> None:
    spec = CaptureSpec(
        proxy_uid=1337,
        outbound_port=16001,
        include_cidrs=("*",),
        exclude_cidrs=("10.77.0.0/24", "192.0.2.1/32"),
    )
    rules = output_rules(spec)
    assert rules[0] == "-m owner --uid-owner 1337 -j RETURN"
    assert rules[-1] == "-p tcp -j REDIRECT --to-ports 16001"
    assert rules.index("-d 10.77.0.0/24 -j RETURN") < len(rules) - 1


def test_inbound_ports_go_to_the_inbound_listener() -> None:
    spec = CaptureSpec(proxy_mark=1, inbound_port=15006, inbound_ports=(9080, 9443))
    assert prerouting_rules(spec) == [
        "-p tcp --dport 9080 -j REDIRECT --to-ports 15006",
        "-p tcp --dport 9443 -j REDIRECT --to-ports 15006",
    ]
    assert prerouting_rules(CaptureSpec(proxy_mark=1)) == []


def test_restore_script_redeclares_both_chains_in_one_commit() -> None:
    script = restore_script(CaptureSpec(proxy_mark=7, inbound_ports=(9080,)))
    lines = script.splitlines()
    assert lines[:3] == ["*nat", ":PLAIT_OUTPUT - [0:0]", ":PLAIT_PREROUTING - [0:0]"]
    assert lines[-1] == "COMMIT"
    assert "-A PLAIT_OUTPUT -m mark --mark 7 -j RETURN" in lines
    assert "-A PLAIT_PREROUTING -p tcp --dport 9080 -j REDIRECT --to-ports 15006" in lines
    assert not any(line.startswith(("-A OUTPUT", "-A PREROUTING")) for line in lines)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (CaptureSpec(), "--proxy-uid or --proxy-mark"),
        (CaptureSpec(proxy_uid=-1), "--proxy-uid -1"),
        (CaptureSpec(proxy_mark=0), "--proxy-mark 0"),
        (CaptureSpec(proxy_mark=1, outbound_port=70000), "port 70000"),
        (CaptureSpec(proxy_mark=1, include_cidrs=()), "nothing to capture"),
        (CaptureSpec(proxy_mark=1, include_cidrs=("10.0.0.0/33",)), "not an IPv4 CIDR"),
        (CaptureSpec(proxy_mark=1, exclude_cidrs=("*",)), "not an IPv4 CIDR"),
        (CaptureSpec(proxy_mark=1, include_cidrs=("fd00::/8",)), "not an IPv4 CIDR"),
    ],
)
def test_unsafe_or_malformed_specs_are_refused(spec: CaptureSpec, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        spec.validate()
