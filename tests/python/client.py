#!/usr/bin/env python3
"""A grpcio client for meterd, with stubs generated from proto/ at run time.

Usage: client.py ADDR TMPDIR

ADDR is any target grpcio takes, e.g. 127.0.0.1:50051 or unix:/run/meterd.sock;
the channel is made with no options, so grpcio sends its default :authority
(for a Unix socket, the %-encoded socket path).

Checks health, calls Emit (a good entry and a bad one) and streams SubmitBatch
with three requests, each holding good batches and one bad batch, asserting
every answer. On success prints a JSON summary on stdout and exits 0; on any
failure prints an explanation on stderr and exits non-zero.
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(REPO, "proto")


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def generate_stubs(out_dir):
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", PROTO,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        "metering/v1/metering.proto",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure("protoc failed (%d): %s\n%s" % (proc.returncode, " ".join(cmd), proc.stderr))
    sys.path.insert(0, out_dir)


def ts(seconds_ago=60):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromNanoseconds(time.time_ns() - seconds_ago * 1_000_000_000)
    return t


def run(addr, tmp):
    import grpc

    generate_stubs(tmp)
    from metering.v1 import metering_pb2 as pb
    from metering.v1 import metering_pb2_grpc as pb_grpc

    summary = {"entries": [], "batches": [], "rejected": []}
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

        # --- Emit: a good entry.
        emitted_at = ts(60)
        entry = pb.Entry(
            kind=pb.KIND_VM_COMPUTE_START,
            vm_id="py-vm-1",
            reason=pb.REASON_BOOT,
            hypervisor="cloud-hypervisor",
            shape=pb.Shape(cpu=2, mem_bytes=1 << 30),
            emitted_at=emitted_at,
            id="py-entry-1",
        )
        resp = stub.Emit(pb.EmitRequest(entry=entry), timeout=10)
        check(not resp.duplicate, "first Emit reported duplicate: %r" % resp)
        check(resp.HasField("emitted_at"), "EmitResponse has no emitted_at: %r" % resp)
        check(
            resp.emitted_at == emitted_at,
            "EmitResponse.emitted_at %s != sent %s"
            % (resp.emitted_at.ToJsonString(), emitted_at.ToJsonString()),
        )
        summary["entries"].append({
            "id": entry.id,
            "kind": "vm.compute.start",
            "vm_id": entry.vm_id,
            "emitted_at": resp.emitted_at.ToJsonString(),
        })

        # --- Emit: a bad entry (VM kind without vm_id).
        bad = pb.Entry(kind=pb.KIND_VM_STORAGE_STOP, shape=pb.Shape(storage_bytes=10), id="py-bad-1")
        try:
            resp = stub.Emit(pb.EmitRequest(entry=bad), timeout=10)
        except grpc.RpcError as e:
            check(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                "bad Emit: want INVALID_ARGUMENT, got %s: %s" % (e.code(), e.details()),
            )
            check("vm_id" in (e.details() or ""), "bad Emit: details do not name vm_id: %r" % e.details())
            summary["bad_emit"] = {"code": e.code().name, "details": e.details()}
        else:
            raise Failure("bad Emit succeeded: %r" % resp)

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
