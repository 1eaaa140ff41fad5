#!/usr/bin/env python3
"""Drive one gRPC unary method with h2load and print a JSON summary line.

Used by scripts/bench. h2load has no notion of gRPC: it counts HTTP 200 as
success, while gRPC errors arrive in trailers of an HTTP 200. So when
--ledger is given, the lines the ledger gained during the measured run are
counted and reported next to h2load's "succeeded" count; they must match.

A fixed request count (-n) is used rather than -D, so that no request is
cut off at the end of the run and the two counts can be compared exactly.
The count comes from a short warm-up run (-D) at the same concurrency,
which also opens the connections and warms the server.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time


def h2load(url, data, clients, streams, extra, log=None):
    cmd = [
        "h2load",
        "-c", str(clients),
        "-m", str(streams),
        "-t", "1",
        "-d", data,
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
    ]
    if log:
        cmd += ["--log-file", log]
    cmd += extra + [url]
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout
    if p.returncode != 0 and "requests:" not in out:
        sys.exit(f"h2load failed ({p.returncode}): {' '.join(cmd)}\n{out}\n{p.stderr}")
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    r = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    if not (m and r):
        sys.exit(f"cannot parse h2load output:\n{out}\n{p.stderr}")
    secs = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    total, started, done, ok, failed, errored, timeout = map(int, r.groups())
    return {
        "cmd": " ".join(cmd),
        "elapsed_s": secs,
        "req_per_s": float(m.group(3)),
        "total": total,
        "done": done,
        "succeeded": ok,
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
    }


def percentiles(log):
    lat = []
    bad = 0
    with open(log) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            if cols[1] != "200":
                bad += 1
                continue
            lat.append(int(cols[2]))
    lat.sort()

    def pct(p):
        if not lat:
            return 0.0
        # nearest rank
        i = max(0, math.ceil(p * len(lat)) - 1)
        return lat[i] / 1000.0

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0), "non_200": bad}


def count_lines_from(path, offset):
    n = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return n
            n += chunk.count(b"\n")


def stream_files(ledger_dir, stream):
    """A stream's files in log order: sealed segments (stream.<position>.jsonl,
    as meterd names them), then the active stream.jsonl."""
    names = sorted(n for n in os.listdir(ledger_dir)
                   if n.startswith(stream + ".") and n.endswith(".jsonl") and n != stream + ".jsonl")
    return [os.path.join(ledger_dir, n) for n in names + [stream + ".jsonl"]
            if os.path.exists(os.path.join(ledger_dir, n))]


def stream_lines(ledger_dir, stream):
    return sum(count_lines_from(p, 0) for p in stream_files(ledger_dir, stream))


def settled_size(path, quiet=0.5, limit=10.0):
    """The size of a file, or of all of a ledger stream's files (a
    (dir, stream) pair), once it has not changed for `quiet` seconds."""
    if isinstance(path, tuple):
        size = lambda: sum(os.path.getsize(p) for p in stream_files(*path))
    else:
        size = lambda: os.path.getsize(path) if os.path.exists(path) else 0
    last, since, start = size(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < limit:
        time.sleep(0.05)
        now = size()
        if now != last:
            last, since = now, time.monotonic()
    return last


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True, help="HOST:PORT")
    ap.add_argument("--path", required=True, help="e.g. /metering.v1.MeteringService/Emit")
    ap.add_argument("--data", required=True, help="gRPC-framed request body")
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True, help="seconds (approximate)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of warm-up used to size -n")
    ap.add_argument("--ledger-dir", help="ledger directory whose new lines of --stream are counted")
    ap.add_argument("--stream", default="entries")
    ap.add_argument("--log", help="keep h2load's per-request log here")
    a = ap.parse_args()

    c = a.concurrency
    clients = min(c, 16)
    streams = math.ceil(c / clients)
    url = f"http://{a.addr}{a.path}"

    warm = h2load(url, a.data, clients, streams, ["-D", str(a.warmup)])
    rate = warm["succeeded"] / max(warm["elapsed_s"], 1e-3)
    n = max(clients * streams * 4, int(rate * a.duration))

    # The warm-up (-D) ends with up to C calls cut off in flight; meterd still
    # finishes (and writes) them after h2load is gone, so wait for the ledger to
    # settle before taking the starting point of the count.
    if a.ledger_dir:
        settled_size((a.ledger_dir, a.stream))
        before = stream_lines(a.ledger_dir, a.stream)
    log = a.log or tempfile.mktemp(prefix="h2load-", suffix=".log")
    run = h2load(url, a.data, clients, streams, ["-n", str(n)], log=log)
    run.update(percentiles(log))
    if not a.log:
        os.unlink(log)
    run.update(
        {
            "path": a.path,
            "concurrency": c,
            "clients": clients,
            "streams_per_client": streams,
            "warmup_req_per_s": round(rate, 1),
            "warmup_succeeded": warm["succeeded"],
        }
    )
    if a.ledger_dir:
        settled_size((a.ledger_dir, a.stream))
        run["ledger_new_lines"] = stream_lines(a.ledger_dir, a.stream) - before
    print(json.dumps(run))


if __name__ == "__main__":
    main()
