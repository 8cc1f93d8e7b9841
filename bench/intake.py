"""Intake throughput: prompts per second that `concordia run` accepts durably.

C joined clients each send P prompts as fast as they can (pipelined: send all, then
wait for every `queued`/`rejected`). Measured from the first send to the last ack;
each prompt's latency runs from its send to its ack, matched by id and timestamped
by the client's reader as the frame arrives. Afterwards the prompts table of the
SQLite file is counted: an ack is only sent once the row is committed.

The clients are a lean protocol-v1 load generator (websockets, nothing else per frame),
run in one or more worker processes so that the generator's own CPU cost can be told
apart from the bot's. Each client-process count gets a fresh bot. The collect window is
60 s, and one warm-up turn runs first so that the runner sleeps through the burst
instead of merging it.

    python -m bench.intake [--clients 100] [--prompts-per-client 100] [--client-procs 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench._common import (
    bot_config,
    command_line,
    db_rows,
    percentile,
    print_table,
    scratch,
)
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic

_COLLECT_WINDOW_S = 60.0
_ACK_TIMEOUT_S = 60.0
_JOIN_TIMEOUT_S = 30.0
_WORKER_TIMEOUT_S = 120.0
_GO = "go"


@dataclass(frozen=True, slots=True)
class _Load:
    """What one worker process measured; times are CLOCK_MONOTONIC, shared by all processes."""

    first_send: float
    last_ack: float
    latencies_s: list[float]
    rejected: int
    prompt_ids: list[int]
    cpu_s: float  # this worker's CPU time over the burst


class _LoadClient:
    """One joined protocol-v1 connection that records when each ack arrived."""

    def __init__(self, ws: ClientConnection, name: str, prompt_count: int):
        self._ws = ws
        self._name = name
        self._prompt_count = prompt_count
        self.sent_at: dict[str, float] = {}
        self.acked_at: dict[str, float] = {}
        self.prompt_ids: list[int] = []
        self.rejected = 0
        self._all_acked = asyncio.Event()

    @classmethod
    async def join(cls, port: int, token: str, name: str, prompt_count: int) -> _LoadClient:
        ws = await connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None)
        await ws.send(json.dumps({"type": "join", "token": token, "name": name}))
        async with asyncio.timeout(_JOIN_TIMEOUT_S):
            welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"{name} was not welcomed: {welcome}")
        return cls(ws, name, prompt_count)

    async def read(self) -> None:
        """Record acks until every prompt has one; other frames are ignored."""
        async for raw in self._ws:
            now = time.monotonic()
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind not in ("queued", "rejected"):
                continue
            self.acked_at[frame["id"]] = now
            if kind == "queued":
                self.prompt_ids.append(int(frame["prompt_id"]))
            else:
                self.rejected += 1
            if len(self.acked_at) == self._prompt_count:
                self._all_acked.set()
                return

    async def send_all(self) -> None:
        for n in range(self._prompt_count):
            client_id = str(n)
            frame = json.dumps({"type": "prompt", "id": client_id, "text": f"{self._name} #{n}"})
            self.sent_at[client_id] = time.monotonic()
            await self._ws.send(frame)
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            await self._all_acked.wait()

    async def close(self) -> None:
        await self._ws.close()


async def _run_load(port: int, token: str, names: list[str], prompt_count: int, conn: Any) -> _Load:
    clients = [await _LoadClient.join(port, token, name, prompt_count) for name in names]
    try:
        conn.send("ready")
        if await asyncio.to_thread(conn.recv) != _GO:
            raise RuntimeError("the benchmark did not say go")
        cpu_before = time.process_time()
        async with asyncio.TaskGroup() as group:
            for client in clients:
                group.create_task(client.read())
                group.create_task(client.send_all())
        cpu_s = time.process_time() - cpu_before
    finally:
        for client in clients:
            await client.close()
    sends = [t for c in clients for t in c.sent_at.values()]
    acks = [t for c in clients for t in c.acked_at.values()]
    return _Load(
        first_send=min(sends),
        last_ack=max(acks),
        latencies_s=[c.acked_at[i] - c.sent_at[i] for c in clients for i in c.acked_at],
        rejected=sum(c.rejected for c in clients),
        prompt_ids=[p for c in clients for p in c.prompt_ids],
        cpu_s=cpu_s,
    )


def _worker(port: int, token: str, names: list[str], prompt_count: int, conn: Any) -> None:
    """A worker process's entry point: report a `_Load` through ``conn``.

    On an error the worker dies with its traceback on stderr; the parent sees the pipe close.
    """
    with conn:
        conn.send(asyncio.run(_run_load(port, token, names, prompt_count, conn)))


@dataclass(frozen=True, slots=True)
class _Result:
    client_procs: int
    total: int
    elapsed_s: float
    latencies_ms: list[float]
    rejected: int
    distinct_ids: int
    db_rows: int
    bot_cpu_s: float
    bot_loop_cpu_s: float  # the main thread: the event loop
    clients_cpu_s: float  # all load-generator processes together


async def _measure(
    api: FakeAnthropic, root: Path, clients: int, prompt_count: int, procs: int
) -> _Result:
    config = bot_config(
        root, api, party={"collect_window_s": _COLLECT_WINDOW_S, "quiet_gap_s": _COLLECT_WINDOW_S}
    )
    context = multiprocessing.get_context("spawn")
    async with BotProcess(config, root) as bot:
        # The collect window holds the runner back for the whole burst: intake is measured alone.
        names = [f"client{i}" for i in range(clients)]
        pipes = []
        workers = []
        for k in range(procs):
            ours, theirs = context.Pipe()
            worker = context.Process(
                target=_worker,
                args=(bot.port, bot.invite, names[k::procs], prompt_count, theirs),
                daemon=True,
            )
            worker.start()
            theirs.close()
            pipes.append(ours)
            workers.append(worker)
        try:
            for pipe in pipes:
                await _receive(pipe)
            assert bot.proc is not None
            bot_ps = psutil.Process(bot.proc.pid)
            cpu_before, loop_before = bot_ps.cpu_times(), _thread_cpu_s(bot_ps, bot_ps.pid)
            for pipe in pipes:
                pipe.send(_GO)
            loads = [await _receive(pipe) for pipe in pipes]
            cpu_after, loop_after = bot_ps.cpu_times(), _thread_cpu_s(bot_ps, bot_ps.pid)
        finally:
            for worker in workers:
                await asyncio.to_thread(worker.join, _WORKER_TIMEOUT_S)
                if worker.is_alive():
                    worker.kill()
                    await asyncio.to_thread(worker.join)
            for pipe in pipes:
                pipe.close()
        rows = db_rows(root / "state" / "concordia.db", "prompts")
    ids = [p for load in loads for p in load.prompt_ids]
    return _Result(
        client_procs=procs,
        total=clients * prompt_count,
        elapsed_s=max(x.last_ack for x in loads) - min(x.first_send for x in loads),
        latencies_ms=[t * 1000 for load in loads for t in load.latencies_s],
        rejected=sum(load.rejected for load in loads),
        distinct_ids=len(set(ids)),
        db_rows=rows,
        bot_cpu_s=(cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
        bot_loop_cpu_s=loop_after - loop_before,
        clients_cpu_s=sum(load.cpu_s for load in loads),
    )


def _thread_cpu_s(process: psutil.Process, thread_id: int) -> float:
    for thread in process.threads():
        if thread.id == thread_id:
            return float(thread.user_time + thread.system_time)
    return float("nan")


async def _receive(pipe: multiprocessing.connection.Connection) -> Any:
    ready = await asyncio.to_thread(pipe.poll, _WORKER_TIMEOUT_S)
    if not ready:
        raise TimeoutError(f"a load worker said nothing for {_WORKER_TIMEOUT_S:g} s")
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError("a load worker died; its traceback is above") from None


async def _main(clients: int, prompt_count: int, client_procs: list[int]) -> None:
    results = []
    async with FakeAnthropic() as api:
        for procs in client_procs:
            with scratch("concordia-bench-intake-") as root:
                results.append(await _measure(api, root, clients, prompt_count, procs))
    cpus = psutil.cpu_count() or 0
    print(
        f"{clients} joined clients x {prompt_count} prompts = {clients * prompt_count:,} prompts,"
        f" pipelined; collect window {_COLLECT_WINDOW_S:g} s; {cpus} CPU(s) shared by the bot"
        " and the load generator"
    )
    print()
    print_table(
        [
            "client procs",
            "prompts",
            "elapsed s",
            "prompts/s",
            "mean ms",
            "p50 ms",
            "p99 ms",
            "max ms",
            "rejected",
            "distinct ids",
            "rows in db",
            "bot CPU s",
            "bot CPU %",
            "loop thread %",
            "clients CPU %",
        ],
        [
            [
                r.client_procs,
                r.total,
                f"{r.elapsed_s:.3f}",
                f"{r.total / r.elapsed_s:,.0f}",
                f"{statistics.mean(r.latencies_ms):.1f}",
                f"{percentile(r.latencies_ms, 50):.1f}",
                f"{percentile(r.latencies_ms, 99):.1f}",
                f"{max(r.latencies_ms):.1f}",
                r.rejected,
                r.distinct_ids,
                r.db_rows,
                f"{r.bot_cpu_s:.2f}",
                f"{100 * r.bot_cpu_s / r.elapsed_s:.0f}",
                f"{100 * r.bot_loop_cpu_s / r.elapsed_s:.0f}",
                f"{100 * r.clients_cpu_s / r.elapsed_s:.0f}",
            ]
            for r in results
        ],
    )
    print()
    print("goal: >= 5,000 prompts/s, 0 rejected, rows in db == prompts (every ack is committed)")
    print(
        "bot CPU %: CPU time of the `concordia run` process over the burst (100 = one core);"
        " loop thread %: of its main thread alone (the event loop), the rest being mostly the"
        " aiosqlite worker thread; clients CPU %: all load-generator processes together."
    )
    print(
        "Row 1 has the whole load generator in one process; if prompts/s hardly moves with"
        " more client processes, the limit is the bot, not the generator."
    )
    for r in results:
        if r.db_rows != r.total or r.distinct_ids != r.total - r.rejected:
            print(
                f"DURABILITY MISMATCH with {r.client_procs} client process(es): {r.total} sent,"
                f" {r.distinct_ids} distinct prompt ids acked, {r.db_rows} rows in the db"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__)
    parser.add_argument("--clients", type=int, default=100, help="joined WebSocket clients")
    parser.add_argument("--prompts-per-client", type=int, default=100, help="prompts each sends")
    parser.add_argument(
        "--client-procs",
        type=int,
        nargs="+",
        default=[1, 2],
        help="load-generator process counts to measure, each against a fresh bot",
    )
    args = parser.parse_args()
    if args.clients < 1 or args.prompts_per_client < 1 or min(args.client_procs) < 1:
        parser.error("--clients, --prompts-per-client and --client-procs must be >= 1")
    if max(args.client_procs) > args.clients:
        parser.error("--client-procs cannot exceed --clients")
    print(
        command_line(
            "bench.intake",
            {
                "clients": args.clients,
                "prompts_per_client": args.prompts_per_client,
                "client_procs": args.client_procs,
            },
        )
    )
    print()
    asyncio.run(_main(args.clients, args.prompts_per_client, args.client_procs))


if __name__ == "__main__":
    main()
