"""AMQP topic matching (``*`` = exactly one word, ``#`` = zero or more words)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["compile_bindings", "topic_matches"]


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether *routing_key* matches the AMQP topic *binding_key*."""
    pattern = binding_key.split(".")
    words = routing_key.split(".")
    # Dynamic programming over (pattern index, word index): O(len(p) * len(w)).
    reachable = {0}
    for token in pattern:
        nxt: set[int] = set()
        for w in reachable:
            if token == "#":
                nxt.update(range(w, len(words) + 1))
            elif w < len(words) and (token == "*" or token == words[w]):
                nxt.add(w + 1)
        if not nxt:
            return False
        reachable = nxt
    return len(words) in reachable


def compile_bindings(binding_keys: Sequence[str]) -> Callable[[str], bool]:
    """A (memoising) predicate: does a routing key match any of *binding_keys*?"""
    keys = tuple(binding_keys)
    if "#" in keys:
        return lambda _key: True
    cache: dict[str, bool] = {}

    def matches(routing_key: str) -> bool:
        hit = cache.get(routing_key)
        if hit is None:
            hit = any(topic_matches(k, routing_key) for k in keys)
            if len(cache) < 4096:
                cache[routing_key] = hit
        return hit

    return matches
