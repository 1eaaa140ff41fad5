#!/usr/bin/env python3
"""Results store and Markdown tables for scripts/bench.

  bench_report.py record RAW SECTION [key=value ...] < json   append one result row
  bench_report.py table RAW SECTION                            print the section's table(s)
  bench_report.py plot RAW PNG                                 optional matplotlib plot

RAW is a JSON-lines file; each row is the JSON object read on stdin (may be
empty) plus "section" and the key=value pairs (numbers parsed).
"""

import json
import sys


def parse(v):
    for f in (int, float):
        try:
            return f(v)
        except ValueError:
            pass
    return v


def rows(raw, section):
    out = []
    try:
        with open(raw) as f:
            for line in f:
                r = json.loads(line)
                if r.get("section") == section:
                    out.append(r)
    except FileNotFoundError:
        pass
    return out


def md(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for r in body:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(lines)


def mib(kib):
    return f"{kib / 1024:.1f}" if isinstance(kib, (int, float)) else "?"


def f0(x):
    return f"{x:,.0f}" if isinstance(x, (int, float)) else "?"


def f1(x):
    return f"{x:.1f}" if isinstance(x, (int, float)) else "?"


def f2(x):
    return f"{x:.2f}" if isinstance(x, (int, float)) else "?"


def emit_points(raw):
    """{(fsync, concurrency): {"Emit": row, "Check": row}} in run order.

    Check is measured before and after Emit; its row is the mean of the two
    runs, with "drift" the relative difference between them."""
    pts, checks = {}, {}
    for r in rows(raw, "emit"):
        key = (r.get("server", "meterd"), r["fsync"], r["concurrency"])
        pts.setdefault(key, {})
        if r["rpc"] == "Check":
            checks.setdefault(key, []).append(r)
        else:
            pts[key][r["rpc"]] = r
    for key, cs in checks.items():
        mean = {k: sum(c[k] for c in cs) / len(cs)
                for k in ("req_per_s", "p50_ms", "p99_ms", "hwm_kib", "cpu_us_per_req")
                if all(k in c for c in cs)}
        mean["hwm_kib"] = max(c["hwm_kib"] for c in cs)
        rates = [c["req_per_s"] for c in cs]
        mean["drift"] = (max(rates) - min(rates)) / mean["req_per_s"] if mean["req_per_s"] else 0
        mean["runs"] = len(cs)
        pts[key]["Check"] = mean
    return pts


def table_emit(raw):
    body = []
    for (server, fsync, c), p in emit_points(raw).items():
        e, k = p.get("Emit", {}), p.get("Check", {})
        ratio = e.get("req_per_s", 0) / k["req_per_s"] if k.get("req_per_s") else None
        ok, lines = e.get("succeeded"), e.get("ledger_new_lines")
        match = "yes" if ok == lines and not e.get("errored") else "**NO**"
        drift = f"{100 * k['drift']:.0f}%" if "drift" in k else "?"
        body.append([
            server, fsync, c,
            f0(k.get("req_per_s")), drift, f"{f2(k.get('p50_ms'))} / {f2(k.get('p99_ms'))}",
            f0(e.get("req_per_s")), f"{f2(e.get('p50_ms'))} / {f2(e.get('p99_ms'))}",
            f2(ratio), f"{f0(e.get('cpu_us_per_req'))} / {f0(k.get('cpu_us_per_req'))}",
            ok, lines, match,
            mib(max(e.get("hwm_kib", 0), k.get("hwm_kib", 0))),
        ])
    return (
        "### Unary Emit vs Health/Check (h2load, same server, same run)\n\n"
        + md(["server", "fsync", "concurrent calls", "Check req/s", "Check drift", "Check p50 / p99 ms",
              "Emit req/s", "Emit p50 / p99 ms", "Emit/Check",
              "CPU us/req Emit / Check",
              "h2load succeeded (Emit)", "ledger lines added", "equal", "peak RSS MiB"], body)
        + "\n\nCheck is run before and after Emit; its figures are the mean of both runs and"
        " \"Check drift\" is how much the two differed (the machine's noise during the point)."
        " Emit/Check uses that mean. Targets at 64 concurrent calls: Emit/Check >= 0.9 with"
        " fsync never, >= 0.5 with fsync always."
    )


def table_batch(raw):
    body = []
    for r in rows(raw, "batch"):
        match = "yes" if r.get("batches_acked") == r.get("ledger_lines") else "**NO**"
        body.append([
            r.get("server", "meterd"), r["fsync"],
            f"{r['streams']} x {r['depth']} x {r['batches_per_request']} x {r['metrics_per_batch']}",
            f0(r.get("metrics_per_s")), f0(r.get("calls_per_s")),
            f"{f2(r.get('p50_ms'))} / {f2(r.get('p99_ms'))}",
            f1(r.get("ledger_mb_s")), f1(r.get("dd_mb_s")), f2(r.get("disk_ratio")),
            r.get("batches_acked"), r.get("ledger_lines"), match, mib(r.get("hwm_kib")),
        ])
    return (
        "### SubmitBatch streaming ingest (load batch) vs sequential write bandwidth (dd conv=fdatasync)\n\n"
        + md(["server", "fsync", "streams x depth x batches x metrics", "metrics/s", "requests/s",
              "request p50 / p99 ms", "ledger MB/s", "dd MB/s (same bytes)", "ledger/dd",
              "batches acked", "ledger lines", "equal", "peak RSS MiB"], body)
    )


def table_footprint(raw):
    body = []
    for r in rows(raw, "footprint"):
        body.append([
            r.get("server", "meterd"), r["fsync"], f1(r.get("startup_ms")), mib(r.get("idle_rss_kib")),
            mib(r.get("emit_hwm_kib")), mib(r.get("after_emit_rss_kib")),
            mib(r.get("batch_hwm_kib")), mib(r.get("after_batch_rss_kib")),
        ])
    text = (
        "### Footprint (resident memory from /proc/PID/status, MiB)\n\n"
        + md(["server", "fsync", "startup to first SERVING ms", "idle VmRSS",
              "peak VmHWM under Emit x256", "VmRSS after", "peak VmHWM under SubmitBatch",
              "VmRSS after"], body)
    )
    peaks = [(r.get("server", "meterd"), r["fsync"], f"h2load {r['rpc']} x{r['concurrency']}", r.get("hwm_kib"))
             for r in rows(raw, "emit")]
    peaks += [(r.get("server", "meterd"), r["fsync"], "SubmitBatch", r.get("hwm_kib")) for r in rows(raw, "batch")]
    if peaks:
        text += "\n\nPeak VmHWM per benchmark point (reset with `echo 5 > /proc/PID/clear_refs` before each):\n\n"
        text += md(["server", "fsync", "point", "VmHWM MiB"], [[s, a, b, mib(c)] for s, a, b, c in peaks])
    return text


def table_peer(raw):
    """meterd against the Go peer, point by point, from the same run."""
    pts = emit_points(raw)
    body = []
    for (server, fsync, c), p in pts.items():
        if server != "meterd" or ("peer", fsync, c) not in pts:
            continue
        m, g = p.get("Emit", {}), pts[("peer", fsync, c)].get("Emit", {})
        mk, gk = p.get("Check", {}), pts[("peer", fsync, c)].get("Check", {})
        ratio = m.get("req_per_s", 0) / g["req_per_s"] if g.get("req_per_s") else None
        kratio = mk.get("req_per_s", 0) / gk["req_per_s"] if gk.get("req_per_s") else None
        mem = max(m.get("hwm_kib", 0), mk.get("hwm_kib", 0))
        gmem = max(g.get("hwm_kib", 0), gk.get("hwm_kib", 0))
        body.append([f"Emit x{c}", fsync, f0(m.get("req_per_s")), f0(g.get("req_per_s")), f2(ratio),
                     f"{f0(mk.get('req_per_s'))} / {f0(gk.get('req_per_s'))} ({f2(kratio)})",
                     mib(mem), mib(gmem), f2(mem / gmem if gmem else None)])
    batch = {(r.get("server", "meterd"), r["fsync"]): r for r in rows(raw, "batch")}
    for (server, fsync), r in batch.items():
        g = batch.get(("peer", fsync))
        if server != "meterd" or not g:
            continue
        ratio = r.get("metrics_per_s", 0) / g["metrics_per_s"] if g.get("metrics_per_s") else None
        body.append(["SubmitBatch", fsync, f0(r.get("metrics_per_s")), f0(g.get("metrics_per_s")),
                     f2(ratio), "", mib(r.get("hwm_kib")), mib(g.get("hwm_kib")),
                     f2(r.get("hwm_kib", 0) / g["hwm_kib"] if g.get("hwm_kib") else None)])
    foot = {r.get("server", "meterd"): r for r in rows(raw, "footprint")}
    if "meterd" in foot and "peer" in foot:
        m, g = foot["meterd"], foot["peer"]
        body.append(["idle", m["fsync"], "", "", "", "", mib(m.get("idle_rss_kib")),
                     mib(g.get("idle_rss_kib")),
                     f2(m.get("idle_rss_kib", 0) / g["idle_rss_kib"] if g.get("idle_rss_kib") else None)])
    if not body:
        return "(no peer data)"
    return (
        "### meterd against the Go peer (same run, same load; req/s and metrics/s)\n\n"
        + md(["point", "fsync", "meterd", "peer", "meterd / peer",
              "Check meterd / peer (ratio)", "meterd peak RSS MiB", "peer peak RSS MiB",
              "RSS meterd / peer"], body)
    )


def table_scaling(raw):
    parts = []
    pts = emit_points(raw)
    if pts:
        body = []
        for (server, fsync, c), p in pts.items():
            if server != "meterd":
                continue
            e, k = p.get("Emit", {}), p.get("Check", {})
            body.append([fsync, c, f0(e.get("req_per_s")), f2(e.get("p99_ms")),
                         f0(k.get("req_per_s")), mib(e.get("hwm_kib"))])
        parts.append("### Scaling with concurrent callers (from the Emit section)\n\n"
                     + md(["fsync", "concurrent calls", "Emit req/s", "Emit p99 ms",
                           "Check req/s", "meterd peak RSS MiB under Emit"], body))
    body = []
    for r in rows(raw, "scaling"):
        body.append([
            r["ledger"], f1(r.get("ledger_bytes", 0) / 1e6), f0(r.get("ledger_entries")),
            f1(r.get("first_start_ms")), f1(r.get("startup_ms")), mib(r.get("idle_rss_kib")),
            f0(r.get("h2_emit_rps")), f0(r.get("ids_emit_rps")), f2(r.get("ids_p99_ms")),
            mib(r.get("hwm_kib")),
        ])
    if body:
        parts.append(
            "### Scaling with ledger size (fsync never, 64 concurrent calls)\n\n"
            + md(["ledger", "entries MB", "ids in the window",
                  "first start ms (seals the old file once)", "restart to SERVING ms",
                  "idle VmRSS MiB", "Emit req/s (h2load, no id)",
                  "Emit calls/s (load, unique ids: dedupe)", "p99 ms (ids)",
                  "peak VmHWM MiB"], body))
    return "\n\n".join(parts) if parts else "(no scaling data)"


def table_chain(raw):
    body = []
    for r in rows(raw, "chain"):
        body.append([
            r.get("in_flight"), f0(r.get("entries")), f"{r.get('batch')} x {r.get('concurrency')}",
            f0(r.get("ingest_per_s")), f0(r.get("end_to_end_per_s")), f1(r.get("end_to_end_s")),
            mib(r.get("sidecar_hwm_kib")), mib(r.get("aggregator_hwm_kib")),
        ])
    return (
        "### Chain: sidecar --sink grpc=aggregator (EmitBatch), both --fsync never\n\n"
        "Entries sent to the sidecar with EmitBatch (load chain), timed until the aggregator's "
        "ledger holds every one.\n\n"
        + md(["--forward-in-flight", "entries", "entries/call x calls in flight",
              "sidecar ingest entries/s", "end to end entries/s", "end to end s",
              "sidecar peak RSS MiB", "aggregator peak RSS MiB"], body)
    )


def plot(raw, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    pts = emit_points(raw)
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for fsync in sorted({f for f, _ in pts}):
        cs = sorted(c for f, c in pts if f == fsync)
        for rpc, style in (("Emit", "-o"), ("Check", "--x")):
            ys = [pts[(fsync, c)].get(rpc, {}).get("req_per_s", 0) for c in cs]
            ax.plot(cs, ys, style, label=f"{rpc} fsync={fsync}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("requests/s")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    print(f"plot: {png}", file=sys.stderr)


def main():
    cmd, raw = sys.argv[1], sys.argv[2]
    if cmd == "record":
        section = sys.argv[3]
        text = sys.stdin.read().strip()
        row = json.loads(text) if text else {}
        row["section"] = section
        for kv in sys.argv[4:]:
            k, v = kv.split("=", 1)
            row[k] = parse(v)
        with open(raw, "a") as f:
            f.write(json.dumps(row) + "\n")
    elif cmd == "table":
        print({"emit": table_emit, "batch": table_batch, "footprint": table_footprint,
               "scaling": table_scaling, "chain": table_chain, "peer": table_peer}[sys.argv[3]](raw))
    elif cmd == "plot":
        plot(raw, sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
