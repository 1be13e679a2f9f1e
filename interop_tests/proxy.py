"""A TCP proxy that injects network faults (this kernel has no ``netem``).

Run it inside a test namespace::

    python -m interop_tests.proxy --listen ADDR:PORT --target ADDR:PORT \\
        [--latency-ms N] [--bandwidth-kbps N] [--drop-every-s S] [--corrupt-after-bytes N]

- ``--latency-ms``: every chunk is delivered N ms after it was read, in both directions
  (chunks are pipelined, so throughput is not limited by the delay);
- ``--bandwidth-kbps``: each direction of each connection is paced to N kilobits per second;
- ``--drop-every-s``: every S seconds all open connections are reset (both sides);
- ``--corrupt-after-bytes``: on each connection, the server->client byte at offset N is
  flipped (once per connection).

When it is ready it prints exactly one line ``listening ADDR:PORT`` on stdout (what the
harness waits for); everything else (one line per connection and per fault) goes to stderr.
It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field

CHUNK = 64 * 1024
# Paced writes are split so that no single write takes longer than this.
PACING_SLICE_S = 0.02


@dataclass(frozen=True)
class Faults:
    latency_s: float = 0.0
    bytes_per_s: float = 0.0  # 0: unlimited
    drop_every_s: float = 0.0  # 0: never
    corrupt_after: int = -1  # -1: never


@dataclass
class Connection:
    number: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    up: int = 0  # client -> server bytes
    down: int = 0  # server -> client bytes
    corrupted_at: int | None = None
    dropped: bool = False

    def abort(self, *, dropped: bool = False) -> None:
        self.dropped = self.dropped or dropped
        for writer in self.writers:
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()


def hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def say(message: str) -> None:
    print(f"{time.time():.3f} proxy: {message}", file=sys.stderr, flush=True)


class Proxy:
    def __init__(self, target: tuple[str, int], faults: Faults) -> None:
        self.target = target
        self.faults = faults
        self.connections: dict[int, Connection] = {}
        self.opened = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        conn = Connection(self.opened, [writer])
        self.connections[conn.number] = conn
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError as error:
                say(f"conn {conn.number}: target {self.target} unreachable: {error}")
                return
            conn.writers.append(up_writer)
            say(f"conn {conn.number}: open")
            pumps = [
                asyncio.create_task(self.pump(conn, reader, up_writer, down=False)),
                asyncio.create_task(self.pump(conn, up_reader, writer, down=True)),
            ]
            # One side ending (EOF, reset) ends the connection: a half-open TLS stream is of
            # no use to gRPC, and this keeps the proxy from holding dead sockets.
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait(pending, timeout=1.0)
            for task in pending:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            conn.abort()
            del self.connections[conn.number]
            say(
                f"conn {conn.number}: closed up={conn.up} down={conn.down}"
                + (f" corrupted_at={conn.corrupted_at}" if conn.corrupted_at is not None else "")
                + (" dropped" if conn.dropped else "")
            )

    def _maybe_corrupt(self, conn: Connection, data: bytes) -> bytes:
        at = self.faults.corrupt_after
        if at < 0 or conn.corrupted_at is not None:
            return data
        if conn.down <= at < conn.down + len(data):
            offset = at - conn.down
            conn.corrupted_at = at
            say(f"conn {conn.number}: corrupted server->client byte {at}")
            return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]
        return data

    async def pump(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        down: bool,
    ) -> None:
        """Copy one direction. With latency, a reader stamps chunks and a writer releases each
        at its stamp plus the delay (so the delay does not serialise the stream)."""
        # Bounded, so a paced direction pushes back on the sender (TCP flow control).
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=16)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time(), data))
                if not data:
                    return

        reading = asyncio.create_task(read())
        try:
            while True:
                stamp, data = await queue.get()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if self.faults.latency_s > 0:
                    delay = stamp + self.faults.latency_s - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if down:
                    data = self._maybe_corrupt(conn, data)
                await self.send(writer, data)
                if down:
                    conn.down += len(data)
                else:
                    conn.up += len(data)
        except (ConnectionError, OSError):
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        rate = self.faults.bytes_per_s
        if rate <= 0:
            writer.write(data)
            await writer.drain()
            return
        step = max(1, int(rate * PACING_SLICE_S))
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(len(piece) / rate)

    async def dropper(self) -> None:
        period = self.faults.drop_every_s
        while True:
            await asyncio.sleep(period)
            if self.connections:
                say(f"dropping {len(self.connections)} connection(s)")
            for conn in list(self.connections.values()):
                conn.abort(dropped=True)


async def serve(listen: tuple[str, int], target: tuple[str, int], faults: Faults) -> None:
    proxy = Proxy(target, faults)
    server = await asyncio.start_server(proxy.handle, listen[0], listen[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(proxy.dropper())] if faults.drop_every_s > 0 else []
    sockname = server.sockets[0].getsockname()
    say(f"{faults} -> {target[0]}:{target[1]}")
    print(f"listening {sockname[0]}:{sockname[1]}", flush=True)
    async with server:
        await stop.wait()
    for task in tasks:
        task.cancel()
    for conn in list(proxy.connections.values()):
        conn.abort()
    say(f"stopped after {proxy.opened} connection(s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m interop_tests.proxy", description=__doc__)
    parser.add_argument("--listen", type=hostport, required=True, help="ADDR:PORT to accept on")
    parser.add_argument("--target", type=hostport, required=True, help="ADDR:PORT to forward to")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-kbps", type=float, default=0.0, help="kilobits per second")
    parser.add_argument("--drop-every-s", type=float, default=0.0)
    parser.add_argument("--corrupt-after-bytes", type=int, default=-1)
    args = parser.parse_args(argv)
    faults = Faults(
        latency_s=max(0.0, args.latency_ms) / 1000.0,
        bytes_per_s=max(0.0, args.bandwidth_kbps) * 1000.0 / 8.0,
        drop_every_s=max(0.0, args.drop_every_s),
        corrupt_after=args.corrupt_after_bytes,
    )
    asyncio.run(serve(args.listen, args.target, faults))


if __name__ == "__main__":
    main()
