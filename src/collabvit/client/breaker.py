"""A circuit breaker: stop calling a server that keeps failing, try again after a cool-down.

::

    closed --(``failure_threshold`` failures in a row)--> open
    open --(``cooldown_s`` passed on the clock)--> half-open
    half-open --(a success)--> closed
    half-open --(a failure)--> open (for another ``cooldown_s``)

While open, :meth:`CircuitBreaker.allow` is False and the edge client answers
its images itself at once (``edge-fallback``). The clock is injected (a
``Callable[[], float]``, ``time.monotonic`` by default) so tests step time by
hand. The breaker is not thread-safe: the edge client uses it from its event
loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from ..errors import ConfigError

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; half-opens after ``cooldown_s``.

    Args:
        failure_threshold: consecutive failures that open the breaker (0: it never opens).
        cooldown_s: seconds it stays open before letting calls through again.
        clock: seconds on a monotonic clock.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 0 or not cooldown_s >= 0:
            raise ConfigError(
                f"a breaker needs failure_threshold >= 0 and cooldown_s >= 0, got "
                f"{failure_threshold} and {cooldown_s}"
            )
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cool-down has passed reads half-open)."""
        if self._state == "open" and self.clock() >= self._opened_at + self.cooldown_s:
            self._state = "half-open"
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    def allow(self) -> bool:
        """Whether a call may go to the server now (False only while open)."""
        return self.state != "open"

    def record_success(self) -> None:
        """A call succeeded: a half-open breaker closes; the failure count restarts.

        A success while open (a call that started before the breaker opened)
        changes nothing: the cool-down runs its course.
        """
        if self.state == "open":
            return
        self._state = "closed"
        self._failures = 0

    def record_failure(self) -> bool:
        """A call failed; return True when this failure opened the breaker."""
        state = self.state
        if state == "open" or self.failure_threshold == 0:
            return False
        if state == "closed":
            self._failures += 1
            if self._failures < self.failure_threshold:
                return False
        self._state = "open"
        self._opened_at = self.clock()
        self._failures = 0
        return True

    def reset(self) -> None:
        """Back to closed with no failures counted."""
        self._state = "closed"
        self._failures = 0
        self._opened_at = 0.0
