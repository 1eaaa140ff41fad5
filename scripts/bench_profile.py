#!/usr/bin/env python3
"""Summarise a perf.data of meterd: self time by thread, by category, top symbols.

  bench_profile.py perf.data     prints Markdown

Categories are guessed from symbol names (self time only, so they add up to 100%).
"""

import re
import subprocess
import sys
from collections import defaultdict

CATEGORIES = [
    ("kernel: TCP/loopback send+receive", r"^\[k\] .*(tcp|sock|skb|ip_|__dev_|net_|napi|loopback|inet|__sys_(send|recv)|(send|recv)msg|copy_(to|from)_user|_copy_|csum|veth|lock_sock)"),
    ("kernel: file write / fsync (ext4, page cache)", r"^\[k\] .*(ext4|jbd2|vfs_|filemap|folio|generic_perform_write|iomap|blk_|file_write|writeback|fdatasync|sync_)"),
    ("kernel: scheduler, futex, wake-ups", r"^\[k\] .*(schedule|futex|finish_task_switch|spin_unlock_irqrestore|try_to_wake_up|ttwu|enqueue|dequeue|pick_next|wake|update_curr|idle)"),
    ("kernel: epoll", r"^\[k\] .*(epoll|ep_)"),
    ("kernel: other (syscall entry/exit, irq)", r"^\[k\] "),
    ("allocator: malloc/free (mimalloc, libc)", r"(malloc|_int_free|^\[\.\] free$|cfree|realloc|calloc|tcache|consolidate|unlink_chunk|^\[\.\] _?mi_)"),
    ("libc: memcpy/memmove/memset", r"(memmove|memcpy|memset|memcmp)"),
    ("HTTP/2 + hyper (h2, hyper, http)", r"(h2::|hyper|http::|httparse|hpack)"),
    ("tonic / tower / prost (gRPC framing, protobuf)", r"(tonic|tower|prost|tonic_prost)"),
    ("tokio runtime", r"(tokio::|mio::|parking_lot|std::sys::.*(futex|thread))"),
    ("meterd: validation, JSON encoding, ledger, sinks", r"meterd::"),
    ("metrics (prometheus-client)", r"prometheus"),
    ("time / formatting", r"(time::|itoa|core::fmt|alloc::fmt)"),
    ("libc / other", r""),
]


def report(path, sort):
    out = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "-g", "none", "--sort", sort, "--stdio"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def main():
    path = sys.argv[1]
    print("Self time by thread:\n")
    print("| thread | % |\n|---|---:|")
    for pct, name in report(path, "comm"):
        print(f"| {name} | {pct:.1f} |")

    syms = report(path, "sym")
    cats = defaultdict(float)
    for pct, sym in syms:
        for name, rx in CATEGORIES:
            if re.search(rx, sym):
                cats[name] += pct
                break
    print("\nSelf time by category (guessed from symbol names):\n")
    print("| category | % |\n|---|---:|")
    for name, _ in CATEGORIES:
        if cats[name] >= 0.05:
            print(f"| {name} | {cats[name]:.1f} |")

    print("\nTop 25 symbols (self):\n")
    print("| % | symbol |\n|---:|---|")
    for pct, sym in syms[:25]:
        sym = sym.replace("|", "\\|")
        if len(sym) > 110:
            sym = sym[:107] + "..."
        print(f"| {pct:.2f} | `{sym}` |")


if __name__ == "__main__":
    main()
