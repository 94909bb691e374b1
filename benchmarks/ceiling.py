"""The machine's ceilings for the receive cases, measured beside the receivers.

``python -m benchmarks.ceiling [--broker amqp|redis|all] [--stream batched|single]
[--n N] [--rounds R]``.  Each round runs, each in a fresh interpreter and fed
by the same separate publisher process (:mod:`benchmarks._stream`) as the
receive cases:

* ``wire``: a minimal consumer that only reads the socket and counts the
  deliveries of the stream.  On RabbitMQ a blocking socket speaking just
  enough AMQP 0-9-1 (handshake through pamqp, then frame headers parsed from
  the bytes of each ``recv``: the routing key of each ``basic.deliver`` is
  looked at, to tell the probes apart, nothing else); on Redis a blocking
  socket ``PSUBSCRIBE`` d to the same pattern, replies split by hiredis.
  Nothing is decoded: the rate at which the broker hands this stream to one
  consumer on this machine, with the publisher running.
* ``adapter``: aiocelev's broker adapter alone (``subscribe`` and count the
  messages): the wire plus the adapter (AMQP frame demultiplexer; Redis drain
  and kombu's envelope).
* ``aiocelev`` / ``celery``: the receivers of the ``receive_*`` case.

and, in process, ``decode``: ``msgspec.json.decode`` of the same message
bodies in a loop (events per CPU-second, best of three): the cost of the JSON
alone, below which no receiver can go.

Printed per broker: the median rate of each (events/s, wall-clock from the
first event of the stream to the last), the CPU rate of each consumer process,
and the receivers' rates as a fraction of the ceilings.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import tempfile
import time
from typing import Any

from ._common import (
    CELERY_BUFFER_LIMIT,
    EXCHANGE,
    PROBE_TYPE,
    RECEIVE_QUEUE_TTL,
    URLS,
    delete_exchange,
    median,
    run_child,
    spawn,
    wait_side,
)

_PROBE_KEY = PROBE_TYPE.replace("-", ".").encode()


def _messages_of(spec: dict[str, Any]) -> int:
    n: int = spec["n"]
    if spec["stream"] == "batched":
        return -(-n // CELERY_BUFFER_LIMIT)
    return n


def _events_per_message(spec: dict[str, Any]) -> int:
    return CELERY_BUFFER_LIMIT if spec["stream"] == "batched" else 1


class _Clock:
    def __init__(self) -> None:
        self.t_go = 0.0
        self.cpu_go = 0.0
        self.t_end = 0.0
        self.cpu_end = 0.0

    def go(self, path: str) -> None:
        open(path, "w").close()
        self.t_go = time.perf_counter()
        self.cpu_go = time.process_time()

    def stop(self) -> None:
        self.t_end = time.perf_counter()
        self.cpu_end = time.process_time()

    def result(
        self, messages: int, spec: dict[str, Any], publisher: dict[str, Any]
    ) -> dict[str, Any]:
        t_end = self.t_end
        start = publisher.get("start")
        t_go = start if isinstance(start, float) and self.t_go <= start <= t_end else self.t_go
        elapsed = t_end - t_go
        cpu = self.cpu_end - self.cpu_go
        events = min(messages * _events_per_message(spec), spec["n"])
        return {
            "received": events,
            "elapsed": elapsed,
            "rate": events / elapsed if elapsed > 0 else 0.0,
            "cpu": cpu,
            "cpu_rate": events / cpu if cpu > 0 else 0.0,
            "publish_rate": publisher.get("rate"),
        }


# -- RabbitMQ: a minimal consumer ---------------------------------------------------


def _amqp_wire(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import unquote, urlparse

    from pamqp import commands, frame, header

    url = urlparse(URLS["amqp"])
    vhost = unquote(url.path[1:]) if url.path not in ("", "/") else "/"
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = bytearray()

    def send(value: Any, channel: int = 0) -> None:
        sock.sendall(frame.marshal(value, channel))

    def expect(kind: type) -> Any:
        while True:
            if pending:
                try:
                    used, _ch, value = frame.unmarshal(bytes(pending))
                except Exception:  # an incomplete frame
                    used = 0
                if used:
                    del pending[:used]
                    if isinstance(value, kind):
                        return value
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            pending.extend(chunk)

    sock.sendall(header.ProtocolHeader().marshal())
    expect(commands.Connection.Start)
    user, password = unquote(url.username or "guest"), unquote(url.password or "guest")
    send(
        commands.Connection.StartOk(
            client_properties={"product": "ceiling"},
            mechanism="PLAIN",
            response=f"\0{user}\0{password}",
            locale="en_US",
        )
    )
    tune = expect(commands.Connection.Tune)
    send(
        commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
        )
    )
    send(commands.Connection.Open(virtual_host=vhost))
    expect(commands.Connection.OpenOk)
    send(commands.Channel.Open(), 1)
    expect(commands.Channel.OpenOk)
    send(commands.Exchange.Declare(exchange=EXCHANGE, exchange_type="topic", durable=True), 1)
    expect(commands.Exchange.DeclareOk)
    send(
        commands.Queue.Declare(
            queue="",
            exclusive=True,
            auto_delete=True,
            arguments={"x-message-ttl": int(RECEIVE_QUEUE_TTL * 1000)},
        ),
        1,
    )
    queue = expect(commands.Queue.DeclareOk).queue
    send(commands.Queue.Bind(queue=queue, exchange=EXCHANGE, routing_key="#"), 1)
    expect(commands.Queue.BindOk)
    send(commands.Basic.Consume(queue=queue, no_ack=True), 1)
    expect(commands.Basic.ConsumeOk)

    target = _messages_of(spec)
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        proc = spawn(
            "_stream", {"mode": f"raw-{spec['stream']}", "n": spec["n"], "go": go, "broker": "amqp"}
        )
        buf = bytearray(pending)
        pos = 0
        count = 0
        started = False
        unpack_header = struct.Struct(">BHI").unpack_from
        recv_into = sock.recv_into
        chunk = bytearray(1 << 20)
        view = memoryview(chunk)
        sock.settimeout(30.0)
        while count < target:
            got = recv_into(view)
            if not got:
                raise ConnectionError("closed")
            buf += view[:got]
            end = len(buf)
            while end - pos >= 7:
                kind, _ch, size = unpack_header(buf, pos)
                if end - pos < size + 8:
                    break
                if kind == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                    # basic.deliver: consumer tag, delivery tag (8), redelivered (1),
                    # exchange, routing key
                    p = pos + 11
                    p += 1 + buf[p]
                    p += 9
                    p += 1 + buf[p]
                    key = bytes(buf[p + 1 : p + 1 + buf[p]])
                    if key == _PROBE_KEY:
                        if not started:
                            started = True
                            clock.go(go)
                    elif started:
                        count += 1
                pos += size + 8
            if pos:
                del buf[:pos]
                pos = 0
        clock.stop()
        publisher = wait_side(proc, 60.0)
        out = clock.result(count, spec, publisher)
    sock.close()
    return out


# -- Redis: a minimal subscriber --------------------------------------------------------


def _redis_wire(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlparse

    import hiredis

    url = urlparse(URLS["redis"])
    db = int(url.path[1:] or 0) if url.path not in ("", "/") else 0
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
    pattern = f"/{db}.{EXCHANGE}/*".encode()
    sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
    reader = hiredis.Reader()
    while True:
        reader.feed(sock.recv(65536))
        reply = reader.gets()
        if reply is not False:
            break
    target = _messages_of(spec)
    clock = _Clock()
    probe_suffix = b"/" + _PROBE_KEY
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        proc = spawn(
            "_stream",
            {"mode": f"raw-{spec['stream']}", "n": spec["n"], "go": go, "broker": "redis"},
        )
        count = 0
        started = False
        recv = sock.recv
        feed = reader.feed
        gets = reader.gets
        sock.settimeout(30.0)
        while count < target:
            data = recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            feed(data)
            while True:
                reply = gets()
                if reply is False:
                    break
                if reply[2].endswith(probe_suffix):
                    if not started:
                        started = True
                        clock.go(go)
                elif started:
                    count += 1
        clock.stop()
        publisher = wait_side(proc, 60.0)
        out = clock.result(count, spec, publisher)
    sock.close()
    return out


# -- aiocelev's adapter alone -------------------------------------------------------------


def _adapter(spec: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from aiocelev import open_broker

    from ._common import broker_options

    broker_name = spec["broker"]
    extra = {"message_ttl": RECEIVE_QUEUE_TTL} if broker_name == "amqp" else {}
    probe_key = PROBE_TYPE.replace("-", ".")

    async def main() -> dict[str, Any]:
        broker = open_broker(URLS[broker_name], **broker_options(broker_name, **extra))
        await broker.connect()
        try:
            subscription = await broker.subscribe(["#"])
            target = _messages_of(spec)
            clock = _Clock()
            with tempfile.TemporaryDirectory() as tmp:
                go = os.path.join(tmp, "go")
                proc = spawn(
                    "_stream",
                    {
                        "mode": f"raw-{spec['stream']}",
                        "n": spec["n"],
                        "go": go,
                        "broker": broker_name,
                    },
                )
                count = 0
                started = False
                async for message in subscription:
                    if message.routing_key == probe_key:
                        if not started:
                            started = True
                            clock.go(go)
                    elif started:
                        count += 1
                        if count >= target:
                            break
                clock.stop()
                publisher = await anyio.to_thread.run_sync(wait_side, proc, 60.0)
                out = clock.result(count, spec, publisher)
            await subscription.aclose()
            return out
        finally:
            await broker.aclose()

    return anyio.run(main)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process)."""
    impl = spec["impl"]
    if impl == "wire":
        return _amqp_wire(spec) if spec["broker"] == "amqp" else _redis_wire(spec)
    if impl == "adapter":
        return _adapter(spec)
    from . import receive

    # Timed as the wire and adapter rows are: from the start of the publisher's
    # burst (the receive cases' default is the drain of the backlog it leaves).
    return receive.child(dict(spec, backlog=False))


def decode_ceiling(stream: str, n: int, repeat: int = 3) -> float:
    """Events per CPU-second of ``msgspec.json.decode`` over the stream's bodies (best of *repeat*)."""
    import msgspec

    from ._stream import _raw_messages

    messages, events = _raw_messages({"mode": f"raw-{stream}", "n": n})
    bodies = [m.body for m in messages]
    decode = msgspec.json.decode
    best = 0.0
    for _ in range(repeat):
        t0 = time.process_time()
        for body in bodies:
            decode(body)
        cpu = time.process_time() - t0
        best = max(best, events / cpu)
    return best


def main() -> None:
    """Measure the ceilings beside the receivers and print the fractions."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling")
    parser.add_argument("--broker", choices=("amqp", "redis", "all"), default="all")
    parser.add_argument("--stream", choices=("batched", "single"), default="batched")
    parser.add_argument("--n", type=int, default=None, help="events (default: the receive case's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--impls", default="wire,adapter,aiocelev,celery")
    args = parser.parse_args()
    n = args.n or (40_000 if args.stream == "batched" else 12_000)
    brokers = ["amqp", "redis"] if args.broker == "all" else [args.broker]
    impls = args.impls.split(",")
    print(
        f"stream {args.stream}, n={n}, {args.rounds} rounds, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    decode = decode_ceiling(args.stream, n)
    print(f"decode (msgspec.json.decode of the bodies, in process): {decode:,.0f} events/CPU-s")
    for broker in brokers:
        raw: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
        for r in range(args.rounds):
            order = impls if r % 2 == 0 else list(reversed(impls))
            for impl in order:
                spec = {
                    "module": "ceiling",
                    "impl": impl,
                    "broker": broker,
                    "stream": args.stream,
                    "n": n,
                }
                res = run_child(spec, timeout=180.0)
                raw[impl].append(res)
                shown = res.get("error") or (
                    f"{res['rate']:,.0f} ev/s, cpu {res['cpu_rate']:,.0f} ev/CPU-s, "
                    f"publisher {res.get('publish_rate') or 0:,.0f} ev/s"
                )
                print(f"  [{broker}] round {r + 1} {impl}: {shown}", flush=True)
        delete_exchange(broker)
        rates = {i: median([x["rate"] for x in raw[i] if "rate" in x]) for i in impls}
        cpus = {i: median([x["cpu_rate"] for x in raw[i] if "cpu_rate" in x]) for i in impls}
        print(f"{broker}: median of {args.rounds} rounds (load {os.getloadavg()[0]:.2f})")
        for i in impls:
            print(f"  {i:9} {rates[i]:>12,.0f} ev/s   {cpus[i]:>12,.0f} ev/CPU-s")
        wire = rates.get("wire")
        for i in ("aiocelev", "celery"):
            if i in rates and wire:
                print(
                    f"  {i}: {rates[i] / wire:.0%} of the wire's rate, "
                    f"CPU rate {cpus[i] / decode:.0%} of the decode ceiling"
                )


if __name__ == "__main__":
    main()
