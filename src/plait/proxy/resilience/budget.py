"""Retry budget: retries may add only a fraction of the request rate, so failures cannot storm.

Linkerd's semantics (its `retryBudget`, from Finagle's RetryBudget and tower's TpsBudget):
every request deposits `retry_ratio` of a token, every retry withdraws one, and a reserve of
`min_retries_per_second x ttl` tokens lets a quiet service retry at all. Deposits and
withdrawals count only for `ttl`: they live in a ring of buckets that expire one by one. So
over any window of `ttl`, retries <= retry_ratio x requests + min_retries_per_second x ttl;
when every endpoint fails, upstream attempts stay near 1.2x the requests instead of 3x.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Final

from plait.config.traffic_policy import BudgetPolicy

__all__ = ["RetryBudget"]

# Tokens are integers in thousandths: exact sums, no float drift over millions of requests.
_SCALE: Final = 1000
# Ten buckets: the window slides in ttl/10 steps (1 s for Linkerd's 10 s), as tower does.
_BUCKETS: Final = 10


class RetryBudget:
    """One budget per cluster. `deposit()` per request, `withdraw()` before each retry."""

    def __init__(
        self,
        retry_ratio: float = 0.2,
        min_retries_per_second: int = 10,
        ttl: float = 10.0,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._clock = clock
        self._width = ttl / _BUCKETS
        self._buckets = [0] * _BUCKETS
        self._slot = int(clock() / self._width)
        self._sum = 0  # the sum of the buckets, kept so withdraw() is O(1)
        self._deposit = round(retry_ratio * _SCALE)
        self._reserve = round(min_retries_per_second * ttl * _SCALE)
        self.refused = 0  # retries the budget refused (a counter for /stats)

    @classmethod
    def from_policy(
        cls, policy: BudgetPolicy, clock: Callable[[], float] = monotonic
    ) -> RetryBudget:
        return cls(policy.retry_ratio, policy.min_retries_per_second, policy.ttl_ms / 1000, clock)

    def _advance(self) -> int:
        """Expire the buckets that left the window; the index of the current one."""
        slot = int(self._clock() / self._width)
        gap = slot - self._slot
        if gap > 0:
            buckets = self._buckets
            if gap >= _BUCKETS:
                buckets[:] = [0] * _BUCKETS
                self._sum = 0
            else:
                for s in range(self._slot + 1, slot + 1):
                    i = s % _BUCKETS
                    self._sum -= buckets[i]
                    buckets[i] = 0
            self._slot = slot
        return self._slot % _BUCKETS

    def deposit(self) -> None:
        i = self._advance()
        self._buckets[i] += self._deposit
        self._sum += self._deposit

    def withdraw(self) -> bool:
        i = self._advance()
        if self._sum + self._reserve < _SCALE:
            self.refused += 1
            return False
        self._buckets[i] -= _SCALE
        self._sum -= _SCALE
        return True

    @property
    def balance(self) -> float:
        """Retries the budget would allow right now (for /stats and `plait explain`)."""
        self._advance()
        return (self._sum + self._reserve) / _SCALE
