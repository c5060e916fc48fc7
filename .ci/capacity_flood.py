#!/usr/bin/env python3
"""Issue 25's capacity reproduction: fill a server with idle or silent connections,
then count how many new clients get an answer.

    capacity_flood.py PORT [--mode idle|silent|busy] [--hold N] [--workers 20]
                      [--requests 5] [--timeout 2] [--server-pid PID]

1. opens --hold connections: `idle` ones make one keep-alive request each and then
   go quiet; `silent` ones never send a byte; `busy` ones ask `GET /sleep/MS` and
   wait for it (the slow answers must all come back whole);
2. then --workers workers each make --requests requests in turn, every one on a new
   connection with a --timeout budget for connect, request and answer;
3. prints one line: `ok=N/M timeouts=N errors=N p50_ms=.. p99_ms=.. max_ms=..`,
   then the held connections still open, and with --server-pid the server's open
   descriptors and its listen queue.

Loopback only; bounded in count and time.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time


async def hold_one(port, mode, sleep_ms, held, busy_done):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 5
        )
    except Exception:
        return
    held.append((reader, writer))
    if mode == "silent":
        return
    path = "/" if mode == "idle" else f"/sleep/{sleep_ms}"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await asyncio.wait_for(reader.readexactly(length), 60)
        if mode == "busy" and head.startswith(b"HTTP/1.1 200") and body == b"slept":
            busy_done.append(1)
    except Exception:
        pass


async def one_request(port, timeout):
    started = time.monotonic()
    writer = None
    try:
        async def go():
            nonlocal writer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return await reader.read(-1)

        answer = await asyncio.wait_for(go(), timeout)
        ok = answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
        return ("ok" if ok else "error"), time.monotonic() - started
    except asyncio.TimeoutError:
        return "timeout", time.monotonic() - started
    except Exception:
        return "error", time.monotonic() - started
    finally:
        if writer is not None:
            writer.close()


async def worker(port, requests, timeout, results):
    for _ in range(requests):
        results.append(await one_request(port, timeout))


def still_open(held):
    return sum(1 for reader, _ in held if not reader.at_eof() and not reader.exception())


def server_state(pid, port):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
    ).stdout.split()
    queue = out[1] if len(out) > 1 else "?"
    return f"server_fds={fds} listen_queue={queue}"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--mode", choices=["idle", "silent", "busy"], default="idle")
    parser.add_argument("--hold", type=int, default=1500)
    parser.add_argument("--sleep-ms", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument(
        "--states", action="store_true",
        help="then print the server side's TCP states, the clients still holding theirs",
    )
    args = parser.parse_args()

    held, busy_done = [], []
    holders = [
        asyncio.create_task(hold_one(args.port, args.mode, args.sleep_ms, held, busy_done))
        for _ in range(args.hold)
    ]
    if args.mode == "busy":
        # The slow answers run meanwhile; the new clients come while they are in flight.
        await asyncio.sleep(1.0)
    else:
        await asyncio.wait(holders, timeout=30)
        await asyncio.sleep(0.5)
    held_before = still_open(held)
    results = []
    await asyncio.gather(
        *(worker(args.port, args.requests, args.timeout, results) for _ in range(args.workers))
    )
    if args.mode == "busy":
        await asyncio.wait(holders, timeout=60)
    latencies = sorted(ms for outcome, ms in results if outcome == "ok")
    ok = len(latencies)

    def pct(p):
        return f"{latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000:.0f}" if latencies else "-"

    print(
        f"mode={args.mode} hold={args.hold} held_open_before={held_before} "
        f"ok={ok}/{len(results)} timeouts={sum(1 for o, _ in results if o == 'timeout')} "
        f"errors={sum(1 for o, _ in results if o == 'error')} "
        f"p50_ms={pct(0.5)} p99_ms={pct(0.99)} max_ms={pct(1.0)} "
        f"held_open_after={still_open(held)}"
        + (f" busy_completed={len(busy_done)}" if args.mode == "busy" else "")
        + (f" {server_state(args.server_pid, args.port)}" if args.server_pid else "")
    )
    if args.states:
        # The server's end of each connection, as the kernel sees it (ss reads what
        # /proc/net/tcp shows): evicted ones are FIN-WAIT-2 (our FIN acknowledged,
        # the client keeps its end), never CLOSE-WAIT, and hold no descriptor.
        out = subprocess.run(
            ["ss", "-Htan", f"sport = :{args.port}"], capture_output=True, text=True
        ).stdout.split("\n")
        states = {}
        for line in out:
            if line.strip():
                state = line.split()[0]
                states[state] = states.get(state, 0) + 1
        print("server-side states:", dict(sorted(states.items())))
    for _, writer in held:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
