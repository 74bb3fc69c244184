"""A low-discrepancy interleaving of weighted streams, in exact integer arithmetic.

Stream ``k`` has an integer weight ``a_k`` (its share is ``pi_k = a_k / A``, ``A = sum(a)``) and
a phase ``phi_k`` in ``(0, 1]``. Its ``m``-th event (``m = 1, 2, ...``) happens at time
``(m - phi_k) / pi_k``; the interleaving is every stream's events in order of ``(time, stream)``.
So the events of stream ``k`` are evenly spaced, ``1 / pi_k`` apart, and each prefix of the
interleaving holds each stream in proportion to its weight. This is the divisor method of
apportionment (Webster / Sainte-Lague when every phase is 1/2), which is *house monotone*: the
counts of a longer prefix are never smaller, so a stream's events form one contiguous run of its
own indices, whatever the prefix is cut into.

Example, weights (2, 1), phases 1/2: stream 0 at times 0.75, 2.25, 3.75, ...; stream 1 at 1.5,
4.5, ...; the interleaving is ``0 1 0 0 1 0 0 1 ...``.

Tolerance. Let ``tau`` be the time of the ``g``-th event. Stream ``k`` has
``floor(pi_k tau + phi_k)`` events at times up to ``tau``, so the count ``C_k(g)`` of stream
``k`` in the first ``g`` events satisfies ``C_k(g) - pi_k tau`` in ``[phi_k - 1, phi_k]``. Since
the counts add up to ``g``, with ``d_i = max(phi_i, 1 - phi_i)``::

    |C_k(g) - pi_k g|  <=  (1 - pi_k) d_k + pi_k * sum(d_i for the other streams of non-zero weight)

for every ``g``, for ever (no drift). With phases 1/2 that is ``1/2 + pi_k (K - 2) / 2`` for
``K`` streams of non-zero weight: at most 1/2 for two streams, below 1 for three. Any ``n``
consecutive events hold ``n pi_k`` of stream ``k`` within twice the bound.

When every ``g pi_k`` is an integer (the end of a repeat epoch, the last step of a bucket
schedule), the counts are exactly ``g pi_k``.

Cost: :meth:`Interleave.counts` is O(K log K) for any ``g`` (the counts at time ``g`` are at most
K events away from the answer), so any position is looked up in the same time.
"""

from __future__ import annotations

import heapq
import math
from fractions import Fraction
from typing import Sequence

import numpy as np

WEBSTER = Fraction(1, 2)


class Interleave:
    """The interleaving of streams of integer ``weights`` with ``phases`` (see the module docs).

    Args:
        weights: Non-negative integer weight of each stream, not all zero. A stream of weight
            0 has no events.
        phases: Each stream's phase in ``(0, 1]``; None gives every stream 1/2 (Webster).
    """

    def __init__(self, weights: Sequence[int], phases: Sequence[Fraction] | None = None) -> None:
        self.weights = tuple(int(w) for w in weights)
        assert self.weights and min(self.weights) >= 0 and sum(self.weights) > 0, self.weights
        self.phases = tuple(Fraction(p) for p in phases) if phases is not None else (WEBSTER,) * len(self.weights)
        assert len(self.phases) == len(self.weights) and all(0 < p <= 1 for p in self.phases), self.phases
        self.total = sum(self.weights)
        self._live = [k for k, w in enumerate(self.weights) if w > 0]
        self._share = np.array([w / self.total for w in self.weights])
        # exact integer keys of the events: key(k, m) = (m - phi_k) L / w_k = (m q_k - p_k) L / (w_k q_k)
        # for phase p_k / q_k, with L the least common multiple of the w_k q_k; a key is the
        # event's time times L / A, so keys order events as their times do
        self._p = [p.numerator for p in self.phases]
        self._q = [p.denominator for p in self.phases]
        self._common = math.lcm(*(w * q for w, q in zip(self.weights, self._q) if w))
        self._scale = [self._common // (w * q) if w else 0 for w, q in zip(self.weights, self._q)]

    def _key(self, k: int, m: int) -> int:
        """The integer key of event ``m`` (1-based) of stream ``k``: its time, rescaled."""
        return (m * self._q[k] - self._p[k]) * self._scale[k]

    def counts(self, g: int) -> list[int]:
        """Events of each stream among the first ``g`` of the interleaving."""
        assert g >= 0, g
        A = self.total
        # events at times up to g, floor(w g / A + p / q): within K of the answer, which the heap then walks to
        n = [(w * g * q + p * A) // (A * q) if w else 0 for w, p, q in zip(self.weights, self._p, self._q)]
        excess = sum(n) - g
        if excess > 0:  # drop the latest events, in (time, stream) order
            latest = [(-self._key(k, n[k]), -k) for k in self._live if n[k] > 0]
            heapq.heapify(latest)
            for _ in range(excess):
                _, neg_k = heapq.heappop(latest)
                k = -neg_k
                n[k] -= 1
                if n[k] > 0:
                    heapq.heappush(latest, (-self._key(k, n[k]), -k))
        elif excess < 0:  # add the next events
            upcoming = [(self._key(k, n[k] + 1), k) for k in self._live]
            heapq.heapify(upcoming)
            for _ in range(-excess):
                _, k = heapq.heappop(upcoming)
                n[k] += 1
                heapq.heappush(upcoming, (self._key(k, n[k] + 1), k))
        return n

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Events ``start .. stop - 1`` of the interleaving: ``(stream, index within the stream)``, int64.

        Indices are 0-based: ``(1, 0)`` is stream 1's first event. Example, weights (2, 1):
        ``window(2, 5)`` -> streams ``[0, 0, 1]``, indices ``[1, 2, 1]``.
        """
        assert 0 <= start <= stop, (start, stop)
        first, last = self.counts(start), self.counts(stop)
        stream = np.repeat(np.arange(len(self.weights), dtype=np.int64), np.subtract(last, first))
        index = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(first, last)])
        # exact keys as Python integers (they may pass 2**63): a float time could swap near-ties,
        # and then two windows cut at another place would not concatenate to the same sequence
        K = len(self.weights)
        keys = [self._key(k, i + 1) * K + k for k, i in zip(stream.tolist(), index.tolist())]
        order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        return stream[order], index[order]

    def rank(self, k: int, m: int) -> int:
        """Position in the interleaving (0-based) of event ``m`` (1-based) of stream ``k``."""
        assert self.weights[k] > 0 and m >= 1, (k, m)
        key = self._key(k, m)
        before = m - 1
        for i in self._live:
            if i != k:
                # stream i's events m' with key(i, m') < key, i.e. m' < x = key w_i / L + p_i / q_i,
                # or (when i < k, which comes first at equal times) m' <= x
                num, den = key * self.weights[i] * self._q[i] + self._p[i] * self._common, self._common * self._q[i]
                before += num // den if i < k else -(-num // den) - 1
        return before

    def tolerance(self) -> np.ndarray:
        """float64 (K,): the bound on ``|C_k(g) - pi_k g|`` of the module docs, for every ``g``."""
        d = np.array([float(max(p, 1 - p)) if w else 0.0 for w, p in zip(self.weights, self.phases)])
        return (1 - self._share) * d + self._share * (d.sum() - d)
