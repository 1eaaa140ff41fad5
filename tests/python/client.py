#!/usr/bin/env python3
"""A grpcio client for meterd, with stubs generated from proto/ at run time.

Usage: client.py ADDR TMPDIR

ADDR is any target grpcio takes, e.g. 127.0.0.1:50051 or unix:/run/meterd.sock;
the channel is made with no options, so grpcio sends its default :authority
(for a Unix socket, the %-encoded socket path). TMPDIR receives the stubs.

Needs `python3 -m pip install grpcio grpcio-tools`. Against a fresh ledger it:

  * checks health;
  * Emit: records a VM boot, sends it again (a duplicate) and sends a bad entry;
  * EmitBatch: the VM's stop, a bad entry and a snapshot's start in one call;
  * SubmitBatch: streams three requests, each holding good batches and a bad one;
  * Tail: reads the entries stream from the start, then resumes after the
    first position;
  * Usage: asks for one UTC day in day buckets and checks the rows exactly;

asserting every answer. It is the same scenario as tests/node/client.js and
tests/go/client.go. On success prints a JSON summary on stdout and exits 0;
on any failure prints an explanation on stderr and exits non-zero.
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(REPO, "proto")

GIB = 1 << 30
# The day the lifecycle entries happen on. Any past day works: meterd takes
# entries emitted long ago (only the future is limited, by --max-clock-skew).
DAY = "2025-03-03"
NEXT_DAY = "2025-03-04"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def generate_stubs(out_dir):
    """Compiles proto/ into out_dir (metering_pb2, ledger_pb2 and their _grpc)."""
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", PROTO,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        "metering/v1/metering.proto",
        "metering/v1/ledger.proto",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure("protoc failed (%d): %s\n%s" % (proc.returncode, " ".join(cmd), proc.stderr))
    sys.path.insert(0, out_dir)


def ts(seconds_ago=60):
    """A Timestamp `seconds_ago` before now (negative: in the future)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromNanoseconds(time.time_ns() - seconds_ago * 1_000_000_000)
    return t


def at(rfc3339):
    """A Timestamp from an RFC 3339 string, e.g. "2025-03-03T08:00:00Z"."""
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromJsonString(rfc3339)
    return t


def run(addr, tmp):
    import grpc

    generate_stubs(tmp)
    from metering.v1 import ledger_pb2 as lpb
    from metering.v1 import ledger_pb2_grpc as lpb_grpc
    from metering.v1 import metering_pb2 as pb
    from metering.v1 import metering_pb2_grpc as pb_grpc

    summary = {
        "entries": [],           # entries recorded (written once each)
        "duplicates": [],        # ids acknowledged again, not written again
        "rejected_entries": [],  # entries refused, with the reason
        "batches": [],           # batches acknowledged
        "rejected": [],          # batches refused
    }
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)

        # --- grpc.health.v1.Health/Check for the whole server. The health
        # proto is not in proto/, so the messages are written by hand: an
        # empty HealthCheckRequest, and status = SERVING (field 1, varint 1).
        check_health = channel.unary_unary("/grpc.health.v1.Health/Check")
        health = check_health(b"", timeout=10)
        check(health == b"\x08\x01", "health Check: want SERVING (08 01), got %r" % health)
        summary["health"] = "SERVING"

        stub = pb_grpc.MeteringServiceStub(channel)
        ledger = lpb_grpc.LedgerServiceStub(channel)

        # The ledger's names of the kinds this client records.
        KIND_NAMES = {
            pb.KIND_VM_COMPUTE_START: "vm.compute.start",
            pb.KIND_VM_COMPUTE_STOP: "vm.compute.stop",
            pb.KIND_SNAP_STORAGE_START: "snap.storage.start",
        }

        def recorded(entry, emitted_at):
            """Notes an entry the server recorded, for the summary."""
            item = {"id": entry.id, "kind": KIND_NAMES[entry.kind], "emitted_at": emitted_at.ToJsonString()}
            if entry.vm_id:
                item["vm_id"] = entry.vm_id
            if entry.snapshot_id:
                item["snapshot_id"] = entry.snapshot_id
            summary["entries"].append(item)

        # --- Emit: a VM boots. Setting emitted_at and id makes a retry safe:
        # the server records the entry once and answers duplicate after that.
        boot = pb.Entry(
            kind=pb.KIND_VM_COMPUTE_START,
            vm_id="py-vm-1",
            reason=pb.REASON_BOOT,
            hypervisor="cloud-hypervisor",
            shape=pb.Shape(cpu=2, mem_bytes=GIB),
            emitted_at=at(DAY + "T08:00:00Z"),
            id="py-vm-1-boot",
        )
        resp = stub.Emit(pb.EmitRequest(entry=boot), timeout=10)
        check(not resp.duplicate, "first Emit reported duplicate: %r" % resp)
        check(
            resp.emitted_at == boot.emitted_at,
            "EmitResponse.emitted_at %s != sent %s"
            % (resp.emitted_at.ToJsonString(), boot.emitted_at.ToJsonString()),
        )
        recorded(boot, resp.emitted_at)

        # --- Emit the same entry again, as a client retrying after a lost
        # answer would: acknowledged as a duplicate, not written twice.
        resp = stub.Emit(pb.EmitRequest(entry=boot), timeout=10)
        check(resp.duplicate, "second Emit of %s: want duplicate, got %r" % (boot.id, resp))
        summary["duplicates"].append(boot.id)

        # --- Emit: a bad entry (a VM kind without vm_id) gets INVALID_ARGUMENT
        # naming the field, and nothing is written.
        bad = pb.Entry(kind=pb.KIND_VM_STORAGE_STOP, shape=pb.Shape(storage_bytes=10), id="py-bad-1")
        try:
            resp = stub.Emit(pb.EmitRequest(entry=bad), timeout=10)
        except grpc.RpcError as e:
            check(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                "bad Emit: want INVALID_ARGUMENT, got %s: %s" % (e.code(), e.details()),
            )
            check(
                (e.details() or "").startswith("entry.vm_id: "),
                "bad Emit: details do not name entry.vm_id: %r" % e.details(),
            )
            summary["rejected_entries"].append({"id": bad.id, "reason": e.details()})
        else:
            raise Failure("bad Emit succeeded: %r" % resp)

        # --- EmitBatch: many entries in one call, one result each, in order.
        # The VM stops 2 h 30 min 0.25 s after it booted (the stop carries
        # the shape that ran); the middle entry has no vm_id and is refused
        # on its own; a snapshot's storage starts and is never stopped.
        stop = pb.Entry(
            kind=pb.KIND_VM_COMPUTE_STOP,
            vm_id="py-vm-1",
            reason=pb.REASON_STOP_USER,
            hypervisor="cloud-hypervisor",
            shape=pb.Shape(cpu=2, mem_bytes=GIB),
            emitted_at=at(DAY + "T10:30:00.250Z"),
            id="py-vm-1-stop",
        )
        no_vm = pb.Entry(kind=pb.KIND_VM_STORAGE_START, shape=pb.Shape(storage_bytes=GIB), id="py-bad-2")
        snap = pb.Entry(
            kind=pb.KIND_SNAP_STORAGE_START,
            snapshot_id="py-snap-1",
            hypervisor="cloud-hypervisor",
            shape=pb.Shape(storage_bytes=10 * GIB),
            emitted_at=at(DAY + "T09:00:00Z"),
            id="py-snap-1-start",
        )
        sent = [stop, no_vm, snap]
        results = stub.EmitBatch(pb.EmitBatchRequest(entries=sent), timeout=10).results
        check(len(results) == len(sent), "EmitBatch: %d results for %d entries" % (len(results), len(sent)))
        for i, (entry, result) in enumerate(zip(sent, results)):
            if entry is no_vm:
                check(
                    result.rejected.startswith("entries[%d].vm_id: " % i),
                    "EmitBatch result %d: want rejected naming entries[%d].vm_id, got %r" % (i, i, result),
                )
                check(not result.HasField("emitted_at"), "EmitBatch result %d: rejected with a time: %r" % (i, result))
                summary["rejected_entries"].append({"id": entry.id, "reason": result.rejected})
                continue
            check(result.rejected == "", "EmitBatch result %d rejected: %s" % (i, result.rejected))
            check(not result.duplicate, "EmitBatch result %d: duplicate" % i)
            check(result.emitted_at == entry.emitted_at, "EmitBatch result %d: emitted_at %s" % (i, result.emitted_at))
            recorded(entry, result.emitted_at)

        # --- SubmitBatch: three pipelined requests, each with good batches
        # and one bad one.
        def batch(uuid, model, **kw):
            b = pb.MetricBatch(
                uuid=uuid,
                model_uuid=model,
                model_name="prod",
                unit_name="postgresql/0",
                charm_url="ch:amd64/postgresql-42",
                created=ts(120),
                credentials=b"macaroon",
            )
            m = b.metrics.add(key="pg-connections", value="12", time=ts(60))
            m.labels["db"] = "main"
            for k, v in kw.items():
                setattr(b, k, v)
            return b

        def future_metric(uuid, model):
            b = batch(uuid, model)
            b.metrics[0].time.CopyFrom(ts(-3600))  # an hour ahead
            return b

        def empty_key(uuid, model):
            b = batch(uuid, model)
            b.metrics.add(key="", value="1", time=ts(30))
            return b

        # (request batches, expected acks by model, expected rejections
        # as (index, uuid, field prefix of the reason))
        plan = [
            (
                [batch("py-b1", "model-a"), batch("py-b2", "model-b"), batch("py-b3", "")],
                {"model-a": ["py-b1"], "model-b": ["py-b2"]},
                [(2, "py-b3", "model_uuid:")],
            ),
            (
                [empty_key("py-b4", "model-a"), batch("py-b5", "model-a"), batch("py-b6", "model-a")],
                {"model-a": ["py-b5", "py-b6"]},
                [(0, "py-b4", "metrics[1].key:")],
            ),
            (
                [batch("py-b7", "model-b"), future_metric("py-b8", "model-b"), batch("py-b9", "model-a", unit_name="")],
                {"model-b": ["py-b7"]},
                [(1, "py-b8", "metrics[0].time:"), (2, "py-b9", "unit_name:")],
            ),
        ]

        def requests():
            for batches, _, _ in plan:
                yield pb.SubmitBatchRequest(batches=batches)

        responses = list(stub.SubmitBatch(requests(), timeout=30))
        check(
            len(responses) == len(plan),
            "SubmitBatch: %d responses to %d requests" % (len(responses), len(plan)),
        )
        seen_uuids = set()
        for n, (resp, (_, want_acks, want_rejected)) in enumerate(zip(responses, plan)):
            check(resp.uuid, "response %d has no uuid" % n)
            check(resp.uuid not in seen_uuids, "response %d repeats uuid %s" % (n, resp.uuid))
            seen_uuids.add(resp.uuid)
            got_acks = {model: list(env.acks) for model, env in resp.env_responses.items()}
            check(got_acks == want_acks, "response %d: acks %r, want %r" % (n, got_acks, want_acks))
            for model, env in resp.env_responses.items():
                check(env.HasField("model_status"), "response %d: model %s has no model_status" % (n, model))
            got_rejected = [(r.index, r.uuid, r.reason) for r in resp.rejected]
            check(
                len(got_rejected) == len(want_rejected),
                "response %d: rejected %r, want %r" % (n, got_rejected, want_rejected),
            )
            for got, want in zip(got_rejected, want_rejected):
                check(
                    got[0] == want[0] and got[1] == want[1] and got[2].startswith(want[2]),
                    "response %d: rejection %r, want index %d uuid %s reason %s..." % ((n, got) + want),
                )
            for r in resp.rejected:
                summary["rejected"].append({"index": r.index, "uuid": r.uuid, "reason": r.reason})
            for model in sorted(got_acks):
                for uuid in got_acks[model]:
                    summary["batches"].append({"uuid": uuid, "model_uuid": model})

        # --- Tail: the entries stream from the start (after = 0), without
        # follow, so the call ends once it has sent what is durable. Every
        # recorded entry comes back once, in the order it was written, at
        # positions 1, 2, 3...
        def tail(after):
            records, last = [], None
            for resp in ledger.Tail(lpb.TailRequest(stream=lpb.STREAM_ENTRIES, after=after), timeout=10):
                records.extend(resp.records)
                last = resp
            check(last is not None, "Tail after %d: no response" % after)
            check(last.caught_up, "Tail after %d: the last response is not caught_up: %r" % (after, last))
            return records, last.position

        want_ids = [e["id"] for e in summary["entries"]]
        records, end = tail(0)
        got_ids = [r.entry.id for r in records]
        check(got_ids == want_ids, "Tail from 0: ids %r, want %r" % (got_ids, want_ids))
        check(
            [r.position for r in records] == list(range(1, len(want_ids) + 1)),
            "Tail from 0: positions %r" % [r.position for r in records],
        )
        check(end == len(want_ids), "Tail from 0: ends at position %d, want %d" % (end, len(want_ids)))
        for r, want in zip(records, summary["entries"]):
            check(r.WhichOneof("record") == "entry", "Tail position %d: not an entry" % r.position)
            check(r.entry.emitted_at.ToJsonString() == want["emitted_at"], "Tail position %d: %r" % (r.position, r.entry))
            check(r.HasField("received_at"), "Tail position %d: no received_at" % r.position)
            line = json.loads(r.line)  # the exact ledger line, as Go tooling reads it
            check(line["id"] == want["id"] and line["kind"] == want["kind"], "Tail position %d: line %s" % (r.position, r.line))
        summary["tail"] = [{"position": r.position, "id": r.entry.id, "line": r.line.decode()} for r in records]

        # A reader that stopped after the first record resumes from its
        # position: no gap, no duplicate.
        after = records[0].position
        resumed, _ = tail(after)
        check(
            [r.position for r in resumed] == [r.position for r in records[1:]],
            "Tail after %d: positions %r" % (after, [r.position for r in resumed]),
        )
        summary["tail_resumed"] = {"after": after, "positions": [r.position for r in resumed]}

        # --- Usage: one UTC day in day buckets. Exact decimal strings, never
        # floats: the VM ran 2 h 30 min 0.25 s with 2 vCPUs and 1 GiB; the
        # snapshot (10 GiB) from 09:00 to the end of the day, still open.
        request = lpb.UsageRequest(
            start_time=at(DAY + "T00:00:00Z"),
            end_time=at(NEXT_DAY + "T00:00:00Z"),
            granularity=lpb.GRANULARITY_DAY,
            time_zone="UTC",
        )
        rows, anomalies = [], []
        for resp in ledger.Usage(request, timeout=10):
            rows.extend(resp.rows)
            anomalies.extend(resp.anomalies)
        want_rows = [
            # (family, id, running_nanos, vcpu_seconds, mem_byte_seconds, storage_byte_seconds, open)
            (lpb.FAMILY_VM_COMPUTE, "py-vm-1", 9_000_250_000_000, "18000.5", "9663944851456", "0", False),
            (lpb.FAMILY_SNAP_STORAGE, "py-snap-1", 54_000_000_000_000, "0", "0", "579820584960000", True),
        ]
        got_rows = [
            (r.family, r.id, r.running_nanos, r.vcpu_seconds, r.mem_byte_seconds, r.storage_byte_seconds, r.open)
            for r in rows
        ]
        check(got_rows == want_rows, "Usage rows %r, want %r" % (got_rows, want_rows))
        for r in rows:
            check(
                r.bucket_start == request.start_time and r.bucket_end == request.end_time,
                "Usage row %s: bucket %s..%s" % (r.id, r.bucket_start.ToJsonString(), r.bucket_end.ToJsonString()),
            )
            check(r.intervals == 1 and r.hypervisor == "cloud-hypervisor", "Usage row %s: %r" % (r.id, r))
        check(not anomalies, "Usage anomalies: %r" % anomalies)
        summary["usage"] = [
            {
                "family": lpb.Family.Name(r.family),
                "id": r.id,
                "hypervisor": r.hypervisor,
                "bucket_start": r.bucket_start.ToJsonString(),
                "bucket_end": r.bucket_end.ToJsonString(),
                # 64-bit integers as strings, as in protobuf's JSON mapping.
                "running_nanos": str(r.running_nanos),
                "vcpu_seconds": r.vcpu_seconds,
                "mem_byte_seconds": r.mem_byte_seconds,
                "storage_byte_seconds": r.storage_byte_seconds,
                "intervals": r.intervals,
                "open": r.open,
            }
            for r in rows
        ]
        summary["anomalies"] = [lpb.AnomalyType.Name(a.type) for a in anomalies]

    return summary


def main():
    if len(sys.argv) != 3:
        print("usage: client.py ADDR TMPDIR", file=sys.stderr)
        return 2
    addr, tmp = sys.argv[1], sys.argv[2]
    try:
        summary = run(addr, tmp)
    except ImportError as e:
        print("FAIL: missing Python module (%s); install with "
              "`python3 -m pip install grpcio grpcio-tools`" % e, file=sys.stderr)
        return 3
    except Failure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        return 1
    except Exception as e:  # an RpcError or anything unexpected
        print("FAIL: unexpected %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
