"""Bounded statistics used by :class:`~aiocelev.ClusterState`.

* :class:`Reservoir` keeps the most recent *n* samples in a ring buffer and
  computes percentiles on demand (the work is done at query time, adding a
  sample is O(1)).
* :class:`RateCounter` counts events per type in one-second buckets over a
  sliding window (O(1) per event; a query sums at most *window* buckets).
* :class:`StatisticsQueries` is the part of :class:`~aiocelev.ClusterState`
  that reads them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping

__all__ = ["RateCounter", "Reservoir", "StatisticsQueries", "percentile"]


def percentile(ordered: list[float], q: float) -> float | None:
    """The *q*-th percentile (0-100) of an already sorted list, by linear interpolation.

    ``None`` for an empty list.

    :raises ValueError: if *q* is outside ``[0, 100]``.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], not {q!r}")
    n = len(ordered)
    if n == 0:
        return None
    if n == 1:
        return ordered[0]
    pos = (n - 1) * (q / 100.0)
    low = int(pos)
    high = low + 1 if low + 1 < n else low
    frac = pos - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac


class Reservoir:
    """The most recent *size* samples of a measurement (a ring buffer).

    :param size: how many samples to keep (at least 1).
    """

    __slots__ = ("_buf", "_size", "count")

    def __init__(self, size: int = 10_000) -> None:
        if size < 1:
            raise ValueError("a reservoir needs room for at least one sample")
        self._size = size
        # A bounded deque drops the oldest sample itself, in C.
        self._buf: deque[float] = deque(maxlen=size)
        #: How many samples were ever added (also those already overwritten).
        self.count = 0

    def add(self, value: float) -> None:
        """Record one sample, overwriting the oldest when full."""
        self.count += 1
        self._buf.append(value)

    def __len__(self) -> int:
        return len(self._buf)

    def values(self) -> list[float]:
        """The kept samples, oldest first (a new list)."""
        return list(self._buf)

    def percentile(self, q: float) -> float | None:
        """The *q*-th percentile (0-100) of the kept samples; ``None`` when empty."""
        return percentile(sorted(self._buf), q)

    def percentiles(self, qs: Iterable[float] = (50, 90, 95, 99)) -> dict[float, float | None]:
        """Several percentiles at once (one sort): ``{q: value}``."""
        ordered = sorted(self._buf)
        return {q: percentile(ordered, q) for q in qs}

    def clear(self) -> None:
        """Forget every sample."""
        self._buf.clear()
        self.count = 0


class RateCounter:
    """Events per second by type over a sliding window of whole seconds, and in total.

    Events are counted in the bucket of their (integer) second; the ring holds
    ``window + 1`` buckets so that the current, partial second never pushes out
    a complete one.  A query averages the *window* complete seconds before the
    current one.  A bucket's counts are added to the running totals when it is
    emptied for reuse, so :meth:`totals` costs nothing per event.

    :param window: the window length in seconds (at least 1).
    """

    __slots__ = ("_buckets", "_folded", "_n", "_sec", "current", "current_sec", "window")

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError("the rate window must be at least one second")
        self.window = window
        self._n = window + 1
        self._buckets: list[dict[str, int]] = [{} for _ in range(self._n)]
        #: Counts of the buckets emptied so far.
        self._folded: dict[str, int] = {}
        #: The second the current bucket counts.
        self._sec = 0
        #: The bucket of the current second and that second (callers on a hot
        #: path may count into ``current`` directly while ``int(now) == current_sec``).
        self.current = self._buckets[0]
        self.current_sec = 0

    def add(self, type_: str, now: float) -> None:
        """Count one event of *type_* that happened at *now* (epoch seconds)."""
        # A late event (time went backwards) is counted in the current second
        # rather than rewriting history.
        self.advance(int(now))
        bucket = self.current
        bucket[type_] = bucket.get(type_, 0) + 1

    def advance(self, sec: int) -> None:
        """Make *sec* the current second if it is later (a hot path then counts into ``current``).

        An earlier *sec* (time went backwards) leaves the current second: a
        late event is counted in it.
        """
        if sec > self._sec:
            self._advance(sec)

    def _advance(self, sec: int) -> None:
        """Move the current second forward to *sec*, emptying the skipped buckets."""
        n = self._n
        steps = sec - self._sec
        if steps >= n:
            for bucket in self._buckets:
                self._fold(bucket)
        else:
            for s in range(self._sec + 1, sec + 1):
                self._fold(self._buckets[s % n])
        self._sec = self.current_sec = sec
        self.current = self._buckets[sec % n]

    def rates(self, now: float) -> dict[str, float]:
        """Events per second by type over the *window* complete seconds before *now*."""
        sec = int(now)
        if sec > self._sec:
            self._advance(sec)
        totals: dict[str, int] = {}
        n = self._n
        oldest_kept = self._sec - n
        for s in range(sec - self.window, sec):
            if s <= oldest_kept or s > self._sec:
                continue
            bucket: Mapping[str, int] = self._buckets[s % n]
            for key, value in bucket.items():
                totals[key] = totals.get(key, 0) + value
        w = float(self.window)
        return {key: value / w for key, value in totals.items()}

    def _fold(self, bucket: dict[str, int]) -> None:
        """Empty *bucket*, adding its counts to the totals."""
        if bucket:
            folded = self._folded
            for key, value in bucket.items():
                folded[key] = folded.get(key, 0) + value
            bucket.clear()

    def totals(self) -> dict[str, int]:
        """How many events of each type were ever counted."""
        totals = dict(self._folded)
        for bucket in self._buckets:
            for key, value in bucket.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def clear(self) -> None:
        """Forget every count."""
        for bucket in self._buckets:
            bucket.clear()
        self._folded.clear()


class StatisticsQueries:
    """The statistics queries of :class:`~aiocelev.ClusterState` (counters, rates, percentiles).

    A mixin: the state provides the counters it reads.
    """

    __slots__ = ()

    _rates: RateCounter
    _time_source: Callable[[], float]
    runtimes: Reservoir
    queue_waits: Reservoir

    def event_counts(self) -> dict[str, int]:
        """How many events of each type were applied."""
        return self._rates.totals()

    def rates(self) -> dict[str, float]:
        """Events per second by type over the last ``rate_window`` complete seconds."""
        return self._rates.rates(self._time_source())

    def rate(self, type_: str | None = None) -> float:
        """Events per second of *type_* (of every type when ``None``)."""
        rates = self.rates()
        if type_ is None:
            return sum(rates.values())
        return rates.get(type_, 0.0)

    def runtime_percentiles(
        self, qs: Iterable[float] = (50, 90, 95, 99)
    ) -> dict[float, float | None]:
        """Percentiles of the recent task runtimes (seconds): ``{q: value}``.

        *qs* are on the 0-100 scale (``50`` is the median, as in
        ``statistics.quantiles(n=100)`` cut points), never fractions of 1.

        :raises ValueError: a *q* outside ``[0, 100]``, or *qs* written as
            fractions (every one within ``[0, 1]``, one of them fractional,
            such as ``(0.5, 0.99)``).
        """
        return self.runtimes.percentiles(_percent_scale(qs))

    def queue_wait_percentiles(
        self, qs: Iterable[float] = (50, 90, 95, 99)
    ) -> dict[float, float | None]:
        """Percentiles of the recent ``started - received`` delays (seconds): ``{q: value}``.

        *qs* are on the 0-100 scale, as for :meth:`runtime_percentiles`.
        """
        return self.queue_waits.percentiles(_percent_scale(qs))


def _percent_scale(qs: Iterable[float]) -> tuple[float, ...]:
    """*qs* checked to be percentiles (0-100), not quantiles written as fractions of 1."""
    values = tuple(qs)
    if values and all(0 <= q <= 1 for q in values) and any(0 < q < 1 for q in values):
        scaled = ", ".join(f"{q * 100:g}" for q in values)
        raise ValueError(
            f"percentiles are on the 0-100 scale (50 is the median), not fractions of 1: "
            f"got {values!r}; did you mean ({scaled})?"
        )
    return values
