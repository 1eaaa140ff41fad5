#!/usr/bin/env node
// A Node client for meterd: @grpc/grpc-js, with proto/ loaded at run time by
// @grpc/proto-loader (no code generation).
//
// Usage: node client.js ADDR      (after `npm ci` in this directory)
//
// ADDR is any target grpc-js takes, e.g. 127.0.0.1:50051 or
// unix:/run/meterd/meterd.sock. Against a fresh ledger it plays the scenario
// of tests/python/client.py and tests/go/client.go:
//
//   * checks health;
//   * Emit: records a VM boot, sends it again (a duplicate) and sends a bad entry;
//   * EmitBatch: the VM's stop, a bad entry and a snapshot's start in one call;
//   * SubmitBatch: two pipelined requests on the bidirectional stream, each
//     with good batches and a bad one;
//   * Tail: reads the entries stream from the start, then resumes after the
//     first position;
//   * Usage: asks for one UTC day in day buckets and checks the rows exactly;
//
// asserting every answer. On success prints a JSON summary on stdout and exits
// 0; on any failure prints an explanation on stderr and exits 1.
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto');
const GIB = 2 ** 30;
// The day the lifecycle entries happen on. Any past day works: meterd takes
// entries emitted long ago (only the future is limited, by --max-clock-skew).
const DAY = '2025-03-03';
const NEXT_DAY = '2025-03-04';

// Loads the .proto files as they are. The options matter for exact values:
//   keepCase: field names as in the .proto (vm_id, not vmId);
//   longs: String: 64-bit integers (running_nanos, positions, timestamps'
//     seconds) as decimal strings, never rounded through a float;
//   enums: String: enum values by name ('KIND_VM_COMPUTE_START');
//   defaults: unset fields read as their zero value ('' , false, '0');
//   oneofs: TailRecord.record names the field that is set ('entry' or 'batch').
// The well-known types (google/protobuf/timestamp.proto) come with proto-loader.
function loadApi() {
  const definition = protoLoader.loadSync(
    ['metering/v1/metering.proto', 'metering/v1/ledger.proto'],
    { includeDirs: [PROTO], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
  );
  return grpc.loadPackageDefinition(definition).metering.v1;
}

// A google.protobuf.Timestamp from an RFC 3339 string (millisecond precision).
function timestamp(rfc3339) {
  const ms = Date.parse(rfc3339);
  assert.ok(!Number.isNaN(ms), `bad time ${rfc3339}`);
  return fromMillis(ms);
}

function fromMillis(ms) {
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1e6 };
}

// A Timestamp as RFC 3339 in UTC, with nanosecond precision and no trailing zeros.
function rfc3339(ts) {
  const base = new Date(Number(ts.seconds) * 1000).toISOString().slice(0, 19);
  const frac = ts.nanos ? '.' + String(ts.nanos).padStart(9, '0').replace(/0+$/, '') : '';
  return `${base}${frac}Z`;
}

// Call options with a deadline: every call should have one.
function withDeadline(seconds = 10) {
  return { deadline: Date.now() + seconds * 1000 };
}

// A unary call as a Promise: `await unary(client, 'Emit', request)`.
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, withDeadline(), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// Every message of a server-streaming call (Tail without follow, Usage).
async function collect(call) {
  const messages = [];
  for await (const message of call) {
    messages.push(message);
  }
  return messages;
}

// A recent time, `secondsAgo` before now (negative: in the future).
function recent(secondsAgo = 60) {
  return fromMillis(Date.now() - secondsAgo * 1000);
}

async function run(addr) {
  const api = loadApi();
  const credentials = grpc.credentials.createInsecure();
  const metering = new api.MeteringService(addr, credentials);
  // A second client on the same channel: grpc-js shares connections by target.
  const ledger = new api.LedgerService(addr, credentials);
  try {
    await new Promise((resolve, reject) =>
      metering.waitForReady(Date.now() + 10000, (err) => (err ? reject(err) : resolve())));
    return await scenario(metering, ledger);
  } finally {
    metering.close();
    ledger.close();
  }
}

async function scenario(metering, ledger) {
  const summary = {
    entries: [], // entries recorded (written once each)
    duplicates: [], // ids acknowledged again, not written again
    rejected_entries: [], // entries refused, with the reason
    batches: [], // batches acknowledged
    rejected: [], // batches refused
  };
  // The ledger's names of the kinds this client records.
  const kindNames = {
    KIND_VM_COMPUTE_START: 'vm.compute.start',
    KIND_VM_COMPUTE_STOP: 'vm.compute.stop',
    KIND_SNAP_STORAGE_START: 'snap.storage.start',
  };
  const recorded = (entry, emittedAt) => {
    const item = { id: entry.id, kind: kindNames[entry.kind], emitted_at: rfc3339(emittedAt) };
    if (entry.vm_id) item.vm_id = entry.vm_id;
    if (entry.snapshot_id) item.snapshot_id = entry.snapshot_id;
    summary.entries.push(item);
  };

  // --- grpc.health.v1.Health/Check for the whole server. The health proto is
  // not in proto/, so the call is made with raw bytes: an empty
  // HealthCheckRequest, and status = SERVING is field 1, varint 1 (08 01).
  const health = await new Promise((resolve, reject) =>
    metering.makeUnaryRequest('/grpc.health.v1.Health/Check', (b) => b, (b) => b, Buffer.alloc(0),
      withDeadline(), (err, response) => (err ? reject(err) : resolve(response))));
  assert.deepEqual(health, Buffer.from([0x08, 0x01]), 'health Check: want SERVING');
  summary.health = 'SERVING';

  // --- Emit: a VM boots. Setting emitted_at and id makes a retry safe: the
  // server records the entry once and answers duplicate after that.
  const boot = {
    kind: 'KIND_VM_COMPUTE_START',
    vm_id: 'node-vm-1',
    reason: 'REASON_BOOT',
    hypervisor: 'cloud-hypervisor',
    shape: { cpu: 2, mem_bytes: GIB },
    emitted_at: timestamp(`${DAY}T08:00:00Z`),
    id: 'node-vm-1-boot',
  };
  let response = await unary(metering, 'Emit', { entry: boot });
  assert.equal(response.duplicate, false, 'first Emit reported duplicate');
  assert.equal(rfc3339(response.emitted_at), rfc3339(boot.emitted_at), 'EmitResponse.emitted_at');
  recorded(boot, response.emitted_at);

  // --- Emit the same entry again, as a client retrying after a lost answer
  // would: acknowledged as a duplicate, not written twice.
  response = await unary(metering, 'Emit', { entry: boot });
  assert.equal(response.duplicate, true, `second Emit of ${boot.id}: want duplicate`);
  summary.duplicates.push(boot.id);

  // --- Emit: a bad entry (a VM kind without vm_id) gets INVALID_ARGUMENT
  // naming the field, and nothing is written.
  const bad = { kind: 'KIND_VM_STORAGE_STOP', shape: { storage_bytes: 10 }, id: 'node-bad-1' };
  await assert.rejects(unary(metering, 'Emit', { entry: bad }), (err) => {
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `bad Emit: ${err.message}`);
    assert.match(err.details, /^entry\.vm_id: /, 'bad Emit: details do not name entry.vm_id');
    summary.rejected_entries.push({ id: bad.id, reason: err.details });
    return true;
  });

  // --- EmitBatch: many entries in one call, one result each, in order. The
  // VM stops 2 h 30 min 0.25 s after it booted (the stop carries the shape
  // that ran); the middle entry has no vm_id and is refused on its own; a
  // snapshot's storage starts and is never stopped.
  const stop = {
    kind: 'KIND_VM_COMPUTE_STOP',
    vm_id: 'node-vm-1',
    reason: 'REASON_STOP_USER',
    hypervisor: 'cloud-hypervisor',
    shape: { cpu: 2, mem_bytes: GIB },
    emitted_at: timestamp(`${DAY}T10:30:00.250Z`),
    id: 'node-vm-1-stop',
  };
  const noVm = { kind: 'KIND_VM_STORAGE_START', shape: { storage_bytes: GIB }, id: 'node-bad-2' };
  const snap = {
    kind: 'KIND_SNAP_STORAGE_START',
    snapshot_id: 'node-snap-1',
    hypervisor: 'cloud-hypervisor',
    shape: { storage_bytes: 10 * GIB },
    emitted_at: timestamp(`${DAY}T09:00:00Z`),
    id: 'node-snap-1-start',
  };
  const sent = [stop, noVm, snap];
  const { results } = await unary(metering, 'EmitBatch', { entries: sent });
  assert.equal(results.length, sent.length, 'EmitBatch: one result per entry');
  sent.forEach((entry, i) => {
    const result = results[i];
    if (entry === noVm) {
      assert.match(result.rejected, new RegExp(`^entries\\[${i}\\]\\.vm_id: `), `EmitBatch result ${i}`);
      assert.equal(result.emitted_at, null, `EmitBatch result ${i}: rejected with a time`);
      summary.rejected_entries.push({ id: entry.id, reason: result.rejected });
      return;
    }
    assert.equal(result.rejected, '', `EmitBatch result ${i} rejected`);
    assert.equal(result.duplicate, false, `EmitBatch result ${i}: duplicate`);
    assert.equal(rfc3339(result.emitted_at), rfc3339(entry.emitted_at), `EmitBatch result ${i}: emitted_at`);
    recorded(entry, result.emitted_at);
  });

  // --- SubmitBatch: a bidirectional stream. Requests are pipelined (written
  // without waiting); each is answered by one response, in order.
  const batch = (uuid, model) => ({
    uuid,
    model_uuid: model,
    model_name: 'prod',
    unit_name: 'postgresql/0',
    charm_url: 'ch:amd64/postgresql-42',
    created: recent(120),
    metrics: [{ key: 'pg-connections', value: '12', time: recent(60), labels: { db: 'main' } }],
    credentials: Buffer.from('macaroon'),
  });
  const emptyKey = (uuid, model) => {
    const b = batch(uuid, model);
    b.metrics[0].key = '';
    return b;
  };
  // Each request with the acks (by model) and rejections it must get.
  const plan = [
    {
      batches: [batch('node-b1', 'model-a'), batch('node-b2', 'model-b'), batch('node-b3', '')],
      acks: { 'model-a': ['node-b1'], 'model-b': ['node-b2'] },
      rejected: [{ index: 2, uuid: 'node-b3', reason: /^model_uuid: / }],
    },
    {
      batches: [batch('node-b4', 'model-a'), emptyKey('node-b5', 'model-a')],
      acks: { 'model-a': ['node-b4'] },
      rejected: [{ index: 1, uuid: 'node-b5', reason: /^metrics\[0\]\.key: / }],
    },
  ];
  const responses = await new Promise((resolve, reject) => {
    const call = metering.SubmitBatch(withDeadline(30));
    const received = [];
    call.on('data', (r) => received.push(r));
    call.on('end', () => resolve(received));
    call.on('error', reject);
    for (const step of plan) call.write({ batches: step.batches });
    call.end(); // half-close: the server answers the rest, then ends the stream
  });
  assert.equal(responses.length, plan.length, 'SubmitBatch: one response per request');
  responses.forEach((r, n) => {
    assert.ok(r.uuid, `SubmitBatch response ${n} has no uuid`);
    const acks = Object.fromEntries(Object.entries(r.env_responses).map(([model, env]) => [model, env.acks]));
    assert.deepEqual(acks, plan[n].acks, `SubmitBatch response ${n}: acks`);
    for (const [model, env] of Object.entries(r.env_responses)) {
      assert.ok(env.model_status, `SubmitBatch response ${n}: model ${model} has no model_status`);
    }
    assert.equal(r.rejected.length, plan[n].rejected.length, `SubmitBatch response ${n}: rejected`);
    r.rejected.forEach((got, k) => {
      const want = plan[n].rejected[k];
      assert.equal(got.index, want.index, `SubmitBatch response ${n}: rejection ${k} index`);
      assert.equal(got.uuid, want.uuid, `SubmitBatch response ${n}: rejection ${k} uuid`);
      assert.match(got.reason, want.reason, `SubmitBatch response ${n}: rejection ${k} reason`);
      summary.rejected.push({ index: got.index, uuid: got.uuid, reason: got.reason });
    });
    for (const model of Object.keys(acks).sort()) {
      for (const uuid of acks[model]) summary.batches.push({ uuid, model_uuid: model });
    }
  });

  // --- Tail: the entries stream from the start (after = '0'), without
  // follow, so the call ends once it has sent what is durable. Every
  // recorded entry comes back once, in the order it was written, at
  // positions 1, 2, 3... Positions are uint64: strings here.
  const tail = async (after) => {
    const messages = await collect(ledger.Tail({ stream: 'STREAM_ENTRIES', after }, withDeadline()));
    assert.ok(messages.length > 0, `Tail after ${after}: no response`);
    const last = messages[messages.length - 1];
    assert.equal(last.caught_up, true, `Tail after ${after}: the last response is not caught_up`);
    return { records: messages.flatMap((m) => m.records), end: last.position };
  };
  const wantIds = summary.entries.map((e) => e.id);
  const { records, end } = await tail('0');
  assert.deepEqual(records.map((r) => r.entry.id), wantIds, 'Tail from 0: ids');
  assert.deepEqual(records.map((r) => r.position), wantIds.map((_, i) => String(i + 1)), 'Tail from 0: positions');
  assert.equal(end, String(wantIds.length), 'Tail from 0: last position');
  records.forEach((r, i) => {
    const want = summary.entries[i];
    assert.equal(r.record, 'entry', `Tail position ${r.position}: not an entry`);
    assert.equal(rfc3339(r.entry.emitted_at), want.emitted_at, `Tail position ${r.position}: emitted_at`);
    assert.ok(r.received_at, `Tail position ${r.position}: no received_at`);
    const line = JSON.parse(r.line.toString('utf8')); // the exact ledger line, as Go tooling reads it
    assert.equal(line.id, want.id, `Tail position ${r.position}: line`);
    assert.equal(line.kind, want.kind, `Tail position ${r.position}: line`);
  });
  summary.tail = records.map((r) => ({ position: Number(r.position), id: r.entry.id, line: r.line.toString('utf8') }));

  // A reader that stopped after the first record resumes from its position:
  // no gap, no duplicate.
  const after = records[0].position;
  const resumed = await tail(after);
  assert.deepEqual(resumed.records.map((r) => r.position), records.slice(1).map((r) => r.position),
    `Tail after ${after}: positions`);
  summary.tail_resumed = { after: Number(after), positions: resumed.records.map((r) => Number(r.position)) };

  // --- Usage: one UTC day in day buckets. Exact decimal strings, never
  // floats: the VM ran 2 h 30 min 0.25 s with 2 vCPUs and 1 GiB; the
  // snapshot (10 GiB) from 09:00 to the end of the day, still open.
  const request = {
    start_time: timestamp(`${DAY}T00:00:00Z`),
    end_time: timestamp(`${NEXT_DAY}T00:00:00Z`),
    granularity: 'GRANULARITY_DAY',
    time_zone: 'UTC',
  };
  const chunks = await collect(ledger.Usage(request, withDeadline()));
  const rows = chunks.flatMap((c) => c.rows);
  const anomalies = chunks.flatMap((c) => c.anomalies);
  const common = {
    hypervisor: 'cloud-hypervisor',
    bucket_start: `${DAY}T00:00:00Z`,
    bucket_end: `${NEXT_DAY}T00:00:00Z`,
    intervals: 1,
  };
  const want = [
    {
      family: 'FAMILY_VM_COMPUTE', id: 'node-vm-1', ...common, running_nanos: '9000250000000',
      vcpu_seconds: '18000.5', mem_byte_seconds: '9663944851456', storage_byte_seconds: '0', open: false,
    },
    {
      family: 'FAMILY_SNAP_STORAGE', id: 'node-snap-1', ...common, running_nanos: '54000000000000',
      vcpu_seconds: '0', mem_byte_seconds: '0', storage_byte_seconds: '579820584960000', open: true,
    },
  ];
  const got = rows.map((r) => ({
    family: r.family,
    id: r.id,
    hypervisor: r.hypervisor,
    bucket_start: rfc3339(r.bucket_start),
    bucket_end: rfc3339(r.bucket_end),
    intervals: r.intervals,
    running_nanos: r.running_nanos, // a string: longs: String
    vcpu_seconds: r.vcpu_seconds,
    mem_byte_seconds: r.mem_byte_seconds,
    storage_byte_seconds: r.storage_byte_seconds,
    open: r.open,
  }));
  assert.deepEqual(got, want, 'Usage rows');
  assert.deepEqual(anomalies, [], 'Usage anomalies');
  summary.usage = got;
  summary.anomalies = anomalies.map((a) => a.type);
  return summary;
}

async function main() {
  if (process.argv.length !== 3) {
    console.error('usage: node client.js ADDR');
    process.exit(2);
  }
  try {
    const summary = await run(process.argv[2]);
    console.log(JSON.stringify(summary));
  } catch (err) {
    // An AssertionError says what differed; a gRPC error has its code and details.
    console.error(`FAIL: ${err.stack || err}`);
    process.exit(1);
  }
}

main();
