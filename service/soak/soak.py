#!/usr/bin/env python3
"""Soak test of kws-service on loopback: steady real-time load for a bounded time, recording the
server's RSS, open fds, threads and CPU from /proc and the event/progress latency percentiles over
time; writes a CSV, a PNG plot and a JSON verdict, and exits 1 if anything grows beyond its bound
or any stream fails.

Load: `--streams` concurrent Detect streams (16 kHz mono s16), each sending the golden stream in
100-ms chunks paced at real time for `--stream-s` seconds, then half-closing and checking its
summary (audio_ms_processed == audio_ms_received); a new stream replaces it at once (churn, so a
per-stream leak shows). Latency = time from sending the chunk that completes the audio a Progress
or KeywordEvent refers to, to receiving that message.

Bounds (defaults; see RELIABILITY.md): comparing the first and the last fifth of the run after the
warm-up, RSS may grow by at most max(--max-rss-growth-mib, --max-rss-growth-pct, default 10 %),
open fds by at most --max-fd-growth, threads not at all, p99 latency by at most max(2x, +50 ms); no stream may fail.

Only 127.0.0.1: the script starts the server itself on free loopback ports (or attaches to one
with --addr/--pid), and every loop is bounded by --duration-s.
"""

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gen_stubs(out: Path) -> None:
    from grpc_tools import protoc  # noqa: PLC0415

    proto = REPO / "proto"
    rc = protoc.main(["protoc", f"-I{proto}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(proto / "kws/v1/kws.proto")])
    if rc != 0:
        sys.exit("protoc failed")
    for d in [out / "kws", out / "kws/v1"]:
        (d / "__init__.py").touch()
    sys.path.insert(0, str(out))


class Proc:
    """Samples /proc/<pid>."""

    def __init__(self, pid: int):
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def sample(self) -> dict:
        status = Path(f"/proc/{self.pid}/status").read_text()
        rss_kib = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
        threads = int(next(l for l in status.splitlines() if l.startswith("Threads:")).split()[1])
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / self.ticks
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        return {"rss_mib": rss_kib / 1024, "fds": fds, "threads": threads, "cpu_s": cpu}


def pct(xs: list, p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


class Stats:
    def __init__(self):
        self.lat_ms: list = []
        self.event_lat_ms: list = []
        self.ok = 0
        self.failed = 0
        self.failures: list = []
        self.send_lag_ms: list = []

    def take(self):
        lat, ev, lag = self.lat_ms, self.event_lat_ms, self.send_lag_ms
        self.lat_ms, self.event_lat_ms, self.send_lag_ms = [], [], []
        return lat, ev, lag


async def one_stream(stub, pb, pcm: bytes, seconds: float, stats: Stats, token):
    chunk = 3200  # 100 ms at 16 kHz s16
    n_chunks = int(seconds * 10)
    sent_at: dict = {}  # audio ms at the end of a chunk -> monotonic time it was sent

    async def requests():
        yield pb.DetectRequest(config=pb.StreamConfig(
            encoding=pb.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=16000, channels=1,
            progress_interval_ms=500))
        t0 = time.monotonic()
        for i in range(n_chunks):
            due = t0 + i * 0.1
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                stats.send_lag_ms.append((now - due) * 1000)
            off = (i * chunk) % len(pcm)
            data = pcm[off:off + chunk]
            if len(data) < chunk:
                data += pcm[:chunk - len(data)]
            sent_at[(i + 1) * 100] = time.monotonic()
            yield pb.DetectRequest(audio=pb.AudioChunk(data=data))

    def latency(audio_ms: int):
        # The chunk that completed `audio_ms` is the first whose end is >= it.
        key = ((audio_ms + 99) // 100) * 100
        t = sent_at.get(key)
        return None if t is None else (time.monotonic() - t) * 1000

    metadata = (("authorization", f"Bearer {token}"),) if token else None
    summary = None
    try:
        call = stub.Detect(requests(), metadata=metadata)
        async for r in call:
            kind = r.WhichOneof("response")
            if kind == "progress":
                lat = latency(r.progress.audio_ms_processed)
                if lat is not None and r.progress.audio_ms_processed > 1000:
                    stats.lat_ms.append(lat)
            elif kind == "event":
                lat = latency(r.event.end_ms)
                if lat is not None:
                    stats.event_lat_ms.append(lat)
            elif kind == "summary":
                summary = r.summary
        if summary is None or summary.audio_ms_processed != summary.audio_ms_received \
                or summary.audio_ms_received != n_chunks * 100:
            stats.failed += 1
            stats.failures.append(f"bad summary: {summary}")
        else:
            stats.ok += 1
    except Exception as e:  # noqa: BLE001 - every failure is recorded and fails the run
        stats.failed += 1
        stats.failures.append(repr(e)[:300])


async def worker(stub, pb, pcm, args, stats: Stats, deadline: float, index: int):
    await asyncio.sleep(index * args.stream_s / max(1, args.streams))  # stagger the churn
    # Constant load until the deadline; the streams still running then are cancelled, not counted.
    while time.monotonic() < deadline:
        await one_stream(stub, pb, pcm, args.stream_s, stats, args.token)


async def run(args) -> int:
    import grpc  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stubs = Path(tempfile.mkdtemp(prefix="kws-soak-stubs-"))
    gen_stubs(stubs)
    from kws.v1 import kws_pb2 as pb  # noqa: PLC0415
    from kws.v1 import kws_pb2_grpc as pbg  # noqa: PLC0415

    server = None
    if args.addr:
        addr, pid = args.addr, args.pid
    else:
        port, mport = free_port(), free_port()
        addr = f"127.0.0.1:{port}"
        cmd = [args.server_bin, "--listen", addr, "--metrics-listen", f"127.0.0.1:{mport}",
               "--models-dir", str(REPO / "models"), "--ort-library", args.ort_lib,
               "--max-streams", str(args.max_streams), "--log-format", "json", "--log-filter", "warn"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(out / "server.log", "w"))
        pid = server.pid
    proc = Proc(pid)

    with wave.open(str(REPO / "models/tc-resnet8/golden/stream.wav")) as w:
        pcm = w.readframes(w.getnframes())
    # Several connections (each its own HTTP/2 connection and server fds), streams spread over them.
    channels = [grpc.aio.insecure_channel(addr, options=[("grpc.max_receive_message_length", 16 << 20),
                                                         ("grpc.use_local_subchannel_pool", 1)])
                for _ in range(args.connections)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    stubs_ = [pbg.KeywordSpottingStub(ch) for ch in channels]

    stats = Stats()
    start = time.monotonic()
    deadline = start + args.duration_s
    tasks = [asyncio.create_task(worker(stubs_[i % len(stubs_)], pb, pcm, args, stats, deadline, i))
             for i in range(args.streams)]
    rows = []
    last_cpu, last_t = proc.sample()["cpu_s"], time.monotonic()
    with open(out / "soak.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["t_s", "rss_mib", "fds", "threads", "cpu_cores", "p50_ms", "p95_ms", "p99_ms",
                     "event_p50_ms", "event_p99_ms", "samples", "streams_ok", "streams_failed",
                     "driver_lag_p99_ms"])
        while time.monotonic() < deadline:
            await asyncio.sleep(min(args.interval_s, max(0.1, deadline - time.monotonic())))
            s = proc.sample()
            now = time.monotonic()
            cores = (s["cpu_s"] - last_cpu) / (now - last_t)
            last_cpu, last_t = s["cpu_s"], now
            lat, ev, lag = stats.take()
            row = [round(now - start, 1), round(s["rss_mib"], 2), s["fds"], s["threads"], round(cores, 3),
                   round(pct(lat, 50), 1), round(pct(lat, 95), 1), round(pct(lat, 99), 1),
                   round(pct(ev, 50), 1), round(pct(ev, 99), 1), len(lat), stats.ok, stats.failed,
                   round(pct(lag, 99), 1) if lag else 0.0]
            rows.append(row)
            wr.writerow(row)
            f.flush()
            print(" ".join(f"{k}={v}" for k, v in zip(
                ["t", "rss", "fds", "thr", "cpu", "p50", "p95", "p99", "ev50", "ev99", "n", "ok", "fail", "lag99"],
                row)), flush=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    exit_code = None
    if server:
        server.send_signal(signal.SIGTERM)
        try:
            exit_code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_code = "killed"
    return verdict(args, rows, stats, exit_code, out)


def verdict(args, rows, stats: Stats, exit_code, out: Path) -> int:
    warm = [r for r in rows if r[0] >= args.warmup_s] or rows
    k = max(1, len(warm) // 5)
    first, last = warm[:k], warm[-k:]
    med = lambda rs, i: statistics.median(r[i] for r in rs if r[i] == r[i])  # noqa: E731 (NaN-safe)
    rss0, rss1 = med(first, 1), med(last, 1)
    fd0, fd1 = med(first, 2), max(r[2] for r in last)
    try:
        p99_0, p99_1 = med(first, 7), med(last, 7)
    except statistics.StatisticsError:
        p99_0 = p99_1 = float("nan")
    rss_bound = max(args.max_rss_growth_mib, args.max_rss_growth_pct / 100 * rss0)
    thr0, thr1 = med(first, 3), max(r[3] for r in last)
    p99_bound = max(2 * p99_0, p99_0 + 50)
    checks = {
        "rss_growth_mib": (round(rss1 - rss0, 2), round(rss_bound, 2), rss1 - rss0 <= rss_bound),
        "fd_growth": (fd1 - fd0, args.max_fd_growth, fd1 - fd0 <= args.max_fd_growth),
        "thread_growth": (thr1 - thr0, 0, thr1 - thr0 <= 0),
        "p99_latency_ms": (round(p99_1, 1), round(p99_bound, 1), p99_1 <= p99_bound),
        "streams_failed": (stats.failed, 0, stats.failed == 0),
        "streams_ok": (stats.ok, ">0", stats.ok > 0),
        "server_exit": (exit_code, 0, exit_code in (None, 0)),
    }
    ok = all(c[2] for c in checks.values())
    report = {
        "ok": ok,
        "streams": args.streams, "duration_s": args.duration_s, "stream_s": args.stream_s,
        "rss_mib_first_last": [rss0, rss1], "fds_first_last": [fd0, fd1], "threads_first_last": [thr0, thr1],
        "p99_ms_first_last": [p99_0, p99_1],
        "checks": {k: {"value": v[0], "bound": v[1], "ok": v[2]} for k, v in checks.items()},
        "failures": stats.failures[:20],
    }
    (out / "verdict.json").write_text(json.dumps(report, indent=2))
    plot(rows, out / "soak.png", args)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


def plot(rows, path: Path, args) -> None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    t = [r[0] / 60 for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax[0].plot(t, [r[1] for r in rows]); ax[0].set_ylabel("RSS (MiB)")
    ax[1].plot(t, [r[2] for r in rows], label="fds"); ax[1].plot(t, [r[3] for r in rows], label="threads")
    ax[1].set_ylabel("count"); ax[1].legend()
    for i, name in [(5, "p50"), (6, "p95"), (7, "p99")]:
        ax[2].plot(t, [r[i] for r in rows], label=f"progress {name}")
    ax[2].plot(t, [r[9] for r in rows], "--", label="event p99")
    ax[2].set_ylabel("latency (ms)"); ax[2].legend(fontsize=8)
    ax[3].plot(t, [r[4] for r in rows]); ax[3].set_ylabel("server CPU (cores)")
    ax[3].set_xlabel("minutes")
    fig.suptitle(f"kws-service soak: {args.streams} real-time streams, {args.duration_s / 60:.0f} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-bin", default=str(REPO / "target/release/kws-service"))
    p.add_argument("--ort-lib", default=str(REPO / ".ort" / os.uname().machine / "libonnxruntime.so"))
    p.add_argument("--addr", help="attach to a running server (host:port on loopback) instead")
    p.add_argument("--pid", type=int, help="its pid (for /proc), with --addr")
    p.add_argument("--token", help="bearer token, if the server requires one")
    p.add_argument("--streams", type=int, default=50, help="concurrent real-time streams (~70%% of capacity)")
    p.add_argument("--connections", type=int, default=8, help="HTTP/2 connections the streams share")
    p.add_argument("--max-streams", type=int, default=1024, help="server admission limit (own server)")
    p.add_argument("--duration-s", type=float, default=1800)
    p.add_argument("--stream-s", type=float, default=60, help="length of each stream before it is replaced")
    p.add_argument("--interval-s", type=float, default=15, help="sampling interval")
    p.add_argument("--warmup-s", type=float, default=120)
    p.add_argument("--max-rss-growth-mib", type=float, default=32)
    p.add_argument("--max-rss-growth-pct", type=float, default=10,
                   help="RSS may grow by max(--max-rss-growth-mib, this %% of the first fifth)")
    p.add_argument("--max-fd-growth", type=int, default=16)
    p.add_argument("--out", default="soak-out")
    args = p.parse_args()
    if args.addr and not args.pid:
        p.error("--addr needs --pid")
    host = (args.addr or "127.0.0.1:0").rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        p.error("loopback only")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
