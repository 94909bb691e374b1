"""Channel names and PSUBSCRIBE patterns of kombu's Redis transport.

kombu publishes a fanout message on
``[global_keyprefix] + fanout_prefix + exchange [+ "/" + routing_key]``:
``fanout_prefix`` is ``/<db>.`` by default (a string replaces the template,
``False`` drops it) and the routing key is appended unless
``fanout_patterns=False``.  Subscribers ``PSUBSCRIBE`` the same with ``#``
turned into ``*``.  Every other key kombu touches (reply lists, binding sets)
takes ``global_keyprefix`` too.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from ._redis_options import ParsedUrl, glob_escape

__all__ = ["RedisChannels", "fanout_prefix"]


def fanout_prefix(parsed: ParsedUrl) -> str:
    """kombu's ``fanout_prefix`` for this URL and options (``/<db>.`` by default)."""
    value = parsed.options.fanout_prefix
    if value is True:
        return f"/{parsed.db}."
    if value is False or value == "":
        return ""
    return str(value).format(db=parsed.db)  # as kombu: "{{db}}" is a literal "{db}"


@final
class RedisChannels:
    """The channels and keys of one adapter (one URL and set of options)."""

    def __init__(self, parsed: ParsedUrl) -> None:
        options = parsed.options
        self.keyprefix = options.global_keyprefix
        #: What every fanout channel starts with: ``[global_keyprefix]/<db>.``.
        self.prefix = self.keyprefix + fanout_prefix(parsed)
        self.exchange = options.exchange
        self.fanout_patterns = options.fanout_patterns
        self._topic_base = self.prefix + options.exchange
        self._topic_slash_b = (self._topic_base + "/").encode("utf-8")
        self._topic_slash_len = len(self._topic_slash_b)

    def key(self, name: str) -> str:
        """A Redis key as kombu names it (with ``global_keyprefix``)."""
        return self.keyprefix + name

    def channel_for(self, routing_key: str, exchange: str | None = None) -> str:
        """The channel kombu publishes *routing_key* on (with every prefix)."""
        base = self.prefix + (exchange or self.exchange)
        if routing_key and self.fanout_patterns:
            return f"{base}/{routing_key}"
        return base

    def pattern_for(self, binding_key: str) -> str:
        """The PSUBSCRIBE pattern of an AMQP *binding_key* (``#`` becomes ``*``)."""
        base = glob_escape(self._topic_base)
        if not self.fanout_patterns:
            return base
        key = glob_escape(binding_key).replace("\\*", "*").replace("#", "*")
        return f"{base}/{key}"

    def patterns_for(self, binding_keys: Sequence[str]) -> list[bytes]:
        """The fewest patterns covering *binding_keys* (one catch-all if ``#`` is among them)."""
        patterns: list[bytes] = []
        for key in binding_keys:
            pattern = self.pattern_for(key).encode("utf-8")
            if pattern not in patterns:
                patterns.append(pattern)
        catch_all = (glob_escape(self._topic_base) + "/*").encode("utf-8")
        if catch_all in patterns:
            return [catch_all]
        return patterns

    def pidbox_pattern(self, exchange: str) -> bytes:
        """The pattern a node subscribes to for the fanout exchange *exchange*."""
        return glob_escape(self.prefix + exchange).encode("utf-8")

    def routing_key_of(self, channel: bytes) -> str | None:
        """The routing key a channel name carries (``None`` when it carries none)."""
        if channel.startswith(self._topic_slash_b):
            return channel[self._topic_slash_len :].decode("utf-8", "replace")
        return None
