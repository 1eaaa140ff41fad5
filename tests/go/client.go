// Command client is a Go client for meterd: grpc-go, with stubs generated
// from proto/ by protoc (protoc-gen-go and protoc-gen-go-grpc).
//
// Build and run (tests/go/build generates the stubs and builds in GOPATH mode
// against Debian's grpc-go packages):
//
//	tests/go/build /tmp/meterd-go-client && /tmp/meterd-go-client 127.0.0.1:50051
//
// ADDR is HOST:PORT or unix:/path/to/meterd.sock. Against a fresh ledger it
// plays the scenario of tests/python/client.py and tests/node/client.js:
//
//   - checks health;
//   - Emit: records a VM boot, sends it again (a duplicate) and sends a bad entry;
//   - EmitBatch: the VM's stop, a bad entry and a snapshot's start in one call;
//   - SubmitBatch: two pipelined requests on the bidirectional stream, each
//     with good batches and a bad one;
//   - Tail: reads the entries stream from the start, then resumes after the
//     first position;
//   - Usage: asks for one UTC day in day buckets and checks the rows exactly;
//
// checking every answer. On success it prints a JSON summary on stdout and
// exits 0; on any failure it prints an explanation on stderr and exits 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	// The stubs: the .proto files' go_package is "meterd/gen/metering/v1".
	pb "meterd/gen/metering/v1"
)

const gib = 1 << 30

// The day the lifecycle entries happen on. Any past day works: meterd takes
// entries emitted long ago (only the future is limited, by --max-clock-skew).
var day = time.Date(2025, 3, 3, 0, 0, 0, 0, time.UTC)

// The ledger's names of the kinds this client records.
var kindNames = map[pb.Kind]string{
	pb.Kind_KIND_VM_COMPUTE_START:   "vm.compute.start",
	pb.Kind_KIND_VM_COMPUTE_STOP:    "vm.compute.stop",
	pb.Kind_KIND_SNAP_STORAGE_START: "snap.storage.start",
}

// The JSON summary printed on success.
type summary struct {
	Health          string          `json:"health"`
	Entries         []recorded      `json:"entries"`          // entries recorded (written once each)
	Duplicates      []string        `json:"duplicates"`       // ids acknowledged again, not written again
	RejectedEntries []rejectedEntry `json:"rejected_entries"` // entries refused, with the reason
	Batches         []ackedBatch    `json:"batches"`          // batches acknowledged
	Rejected        []rejectedBatch `json:"rejected"`         // batches refused
	Tail            []tailed        `json:"tail"`
	TailResumed     resumed         `json:"tail_resumed"`
	Usage           []usageRow      `json:"usage"`
	Anomalies       []string        `json:"anomalies"`
}

type recorded struct {
	ID         string `json:"id"`
	Kind       string `json:"kind"`
	VMID       string `json:"vm_id,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
	EmittedAt  string `json:"emitted_at"`
}

type rejectedEntry struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

type ackedBatch struct {
	UUID      string `json:"uuid"`
	ModelUUID string `json:"model_uuid"`
}

type rejectedBatch struct {
	Index  uint32 `json:"index"`
	UUID   string `json:"uuid"`
	Reason string `json:"reason"`
}

type tailed struct {
	Position uint64 `json:"position"`
	ID       string `json:"id"`
	Line     string `json:"line"`
}

type resumed struct {
	After     uint64   `json:"after"`
	Positions []uint64 `json:"positions"`
}

type usageRow struct {
	Family             string `json:"family"`
	ID                 string `json:"id"`
	Hypervisor         string `json:"hypervisor"`
	BucketStart        string `json:"bucket_start"`
	BucketEnd          string `json:"bucket_end"`
	RunningNanos       string `json:"running_nanos"` // 64-bit integers as strings, as in protobuf's JSON
	VcpuSeconds        string `json:"vcpu_seconds"`
	MemByteSeconds     string `json:"mem_byte_seconds"`
	StorageByteSeconds string `json:"storage_byte_seconds"`
	Intervals          uint32 `json:"intervals"`
	Open               bool   `json:"open"`
}

// check ends the program with an explanation when ok is false.
func check(ok bool, format string, args ...interface{}) {
	if !ok {
		fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
}

// must ends the program when err is not nil.
func must(err error, what string) {
	check(err == nil, "%s: %v", what, err)
}

// rfc3339 formats a Timestamp in UTC with nanosecond precision.
func rfc3339(ts *timestamppb.Timestamp) string {
	return ts.AsTime().UTC().Format(time.RFC3339Nano)
}

// call returns a context with a deadline: every call should have one.
func call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: client ADDR")
		os.Exit(2)
	}
	ctx, cancel := call()
	// Plaintext, blocking until connected. grpc.WithInsecure is the spelling
	// of grpc-go 1.33 (Debian 12); newer releases prefer
	// grpc.WithTransportCredentials(insecure.NewCredentials()).
	conn, err := grpc.DialContext(ctx, os.Args[1], grpc.WithInsecure(), grpc.WithBlock())
	cancel()
	must(err, "connect to "+os.Args[1])
	defer conn.Close()

	s := run(conn)
	out, err := json.Marshal(s)
	must(err, "encode the summary")
	fmt.Println(string(out))
}

func run(conn *grpc.ClientConn) *summary {
	s := &summary{Duplicates: []string{}, Anomalies: []string{}}
	metering := pb.NewMeteringServiceClient(conn)
	ledger := pb.NewLedgerServiceClient(conn)
	note := func(e *pb.Entry, emittedAt *timestamppb.Timestamp) {
		s.Entries = append(s.Entries, recorded{
			ID: e.Id, Kind: kindNames[e.Kind], VMID: e.VmId, SnapshotID: e.SnapshotId,
			EmittedAt: rfc3339(emittedAt),
		})
	}

	// --- grpc.health.v1.Health/Check for the whole server.
	ctx, cancel := call()
	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	must(err, "health Check")
	check(health.Status == healthpb.HealthCheckResponse_SERVING, "health: %v", health.Status)
	s.Health = health.Status.String()

	// --- Emit: a VM boots. Setting EmittedAt and Id makes a retry safe: the
	// server records the entry once and answers Duplicate after that.
	boot := &pb.Entry{
		Kind:       pb.Kind_KIND_VM_COMPUTE_START,
		VmId:       "go-vm-1",
		Reason:     pb.Reason_REASON_BOOT,
		Hypervisor: "cloud-hypervisor",
		Shape:      &pb.Shape{Cpu: 2, MemBytes: gib},
		EmittedAt:  timestamppb.New(day.Add(8 * time.Hour)),
		Id:         "go-vm-1-boot",
	}
	ctx, cancel = call()
	resp, err := metering.Emit(ctx, &pb.EmitRequest{Entry: boot})
	cancel()
	must(err, "Emit")
	check(!resp.Duplicate, "first Emit reported duplicate")
	check(proto.Equal(resp.EmittedAt, boot.EmittedAt), "EmitResponse.EmittedAt %s, sent %s",
		rfc3339(resp.EmittedAt), rfc3339(boot.EmittedAt))
	note(boot, resp.EmittedAt)

	// --- Emit the same entry again, as a client retrying after a lost answer
	// would: acknowledged as a duplicate, not written twice.
	ctx, cancel = call()
	resp, err = metering.Emit(ctx, &pb.EmitRequest{Entry: boot})
	cancel()
	must(err, "second Emit")
	check(resp.Duplicate, "second Emit of %s: want duplicate", boot.Id)
	s.Duplicates = append(s.Duplicates, boot.Id)

	// --- Emit: a bad entry (a VM kind without VmId) gets InvalidArgument
	// naming the field, and nothing is written.
	bad := &pb.Entry{Kind: pb.Kind_KIND_VM_STORAGE_STOP, Shape: &pb.Shape{StorageBytes: 10}, Id: "go-bad-1"}
	ctx, cancel = call()
	_, err = metering.Emit(ctx, &pb.EmitRequest{Entry: bad})
	cancel()
	st := status.Convert(err)
	check(st.Code() == codes.InvalidArgument, "bad Emit: want InvalidArgument, got %v", err)
	check(strings.HasPrefix(st.Message(), "entry.vm_id: "), "bad Emit: %q does not name entry.vm_id", st.Message())
	s.RejectedEntries = append(s.RejectedEntries, rejectedEntry{ID: bad.Id, Reason: st.Message()})

	// --- EmitBatch: many entries in one call, one result each, in order. The
	// VM stops 2 h 30 min 0.25 s after it booted (the stop carries the shape
	// that ran); the middle entry has no VmId and is refused on its own; a
	// snapshot's storage starts and is never stopped.
	stop := &pb.Entry{
		Kind:       pb.Kind_KIND_VM_COMPUTE_STOP,
		VmId:       "go-vm-1",
		Reason:     pb.Reason_REASON_STOP_USER,
		Hypervisor: "cloud-hypervisor",
		Shape:      &pb.Shape{Cpu: 2, MemBytes: gib},
		EmittedAt:  timestamppb.New(day.Add(10*time.Hour + 30*time.Minute + 250*time.Millisecond)),
		Id:         "go-vm-1-stop",
	}
	noVM := &pb.Entry{Kind: pb.Kind_KIND_VM_STORAGE_START, Shape: &pb.Shape{StorageBytes: gib}, Id: "go-bad-2"}
	snap := &pb.Entry{
		Kind:       pb.Kind_KIND_SNAP_STORAGE_START,
		SnapshotId: "go-snap-1",
		Hypervisor: "cloud-hypervisor",
		Shape:      &pb.Shape{StorageBytes: 10 * gib},
		EmittedAt:  timestamppb.New(day.Add(9 * time.Hour)),
		Id:         "go-snap-1-start",
	}
	sent := []*pb.Entry{stop, noVM, snap}
	ctx, cancel = call()
	batchResp, err := metering.EmitBatch(ctx, &pb.EmitBatchRequest{Entries: sent})
	cancel()
	must(err, "EmitBatch")
	check(len(batchResp.Results) == len(sent), "EmitBatch: %d results for %d entries", len(batchResp.Results), len(sent))
	for i, e := range sent {
		r := batchResp.Results[i]
		if e == noVM {
			check(strings.HasPrefix(r.Rejected, fmt.Sprintf("entries[%d].vm_id: ", i)),
				"EmitBatch result %d: want rejected naming entries[%d].vm_id, got %v", i, i, r)
			check(r.EmittedAt == nil, "EmitBatch result %d: rejected with a time", i)
			s.RejectedEntries = append(s.RejectedEntries, rejectedEntry{ID: e.Id, Reason: r.Rejected})
			continue
		}
		check(r.Rejected == "", "EmitBatch result %d rejected: %s", i, r.Rejected)
		check(!r.Duplicate, "EmitBatch result %d: duplicate", i)
		check(proto.Equal(r.EmittedAt, e.EmittedAt), "EmitBatch result %d: emitted_at %s", i, rfc3339(r.EmittedAt))
		note(e, r.EmittedAt)
	}

	submitBatches(metering, s)
	tail(ledger, s)
	usage(ledger, s)
	return s
}

// submitBatches streams two pipelined SubmitBatch requests, each with good
// batches and a bad one, and checks the one response each gets, in order.
func submitBatches(metering pb.MeteringServiceClient, s *summary) {
	now := time.Now()
	batch := func(uuid, model string) *pb.MetricBatch {
		return &pb.MetricBatch{
			Uuid:        uuid,
			ModelUuid:   model,
			ModelName:   "prod",
			UnitName:    "postgresql/0",
			CharmUrl:    "ch:amd64/postgresql-42",
			Created:     timestamppb.New(now.Add(-2 * time.Minute)),
			Metrics:     []*pb.Metric{{Key: "pg-connections", Value: "12", Time: timestamppb.New(now.Add(-time.Minute)), Labels: map[string]string{"db": "main"}}},
			Credentials: []byte("macaroon"),
		}
	}
	emptyKey := batch("go-b5", "model-a")
	emptyKey.Metrics[0].Key = ""
	type rejection struct {
		index        uint32
		uuid, prefix string
	}
	plan := []struct {
		batches  []*pb.MetricBatch
		acks     map[string][]string
		rejected []rejection
	}{
		{
			batches:  []*pb.MetricBatch{batch("go-b1", "model-a"), batch("go-b2", "model-b"), batch("go-b3", "")},
			acks:     map[string][]string{"model-a": {"go-b1"}, "model-b": {"go-b2"}},
			rejected: []rejection{{2, "go-b3", "model_uuid: "}},
		},
		{
			batches:  []*pb.MetricBatch{batch("go-b4", "model-a"), emptyKey},
			acks:     map[string][]string{"model-a": {"go-b4"}},
			rejected: []rejection{{1, "go-b5", "metrics[0].key: "}},
		},
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := metering.SubmitBatch(ctx)
	must(err, "SubmitBatch")
	// Pipelined: every request is sent before any answer is read, then the
	// sending side is closed. A long-lived stream would send from one
	// goroutine and receive in another.
	for _, step := range plan {
		must(stream.Send(&pb.SubmitBatchRequest{Batches: step.batches}), "SubmitBatch send")
	}
	must(stream.CloseSend(), "SubmitBatch close")
	var responses []*pb.SubmitBatchResponse
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(err, "SubmitBatch receive")
		responses = append(responses, r)
	}
	check(len(responses) == len(plan), "SubmitBatch: %d responses to %d requests", len(responses), len(plan))
	for n, r := range responses {
		check(r.Uuid != "", "SubmitBatch response %d has no uuid", n)
		acks := map[string][]string{}
		for model, env := range r.EnvResponses {
			acks[model] = env.Acks
			check(env.ModelStatus != nil, "SubmitBatch response %d: model %s has no model status", n, model)
		}
		check(reflect.DeepEqual(acks, plan[n].acks), "SubmitBatch response %d: acks %v, want %v", n, acks, plan[n].acks)
		check(len(r.Rejected) == len(plan[n].rejected), "SubmitBatch response %d: rejected %v", n, r.Rejected)
		for k, got := range r.Rejected {
			want := plan[n].rejected[k]
			check(got.Index == want.index && got.Uuid == want.uuid && strings.HasPrefix(got.Reason, want.prefix),
				"SubmitBatch response %d: rejection %v, want index %d uuid %s reason %s...", n, got, want.index, want.uuid, want.prefix)
			s.Rejected = append(s.Rejected, rejectedBatch{Index: got.Index, UUID: got.Uuid, Reason: got.Reason})
		}
		for _, model := range []string{"model-a", "model-b"} { // sorted
			for _, uuid := range acks[model] {
				s.Batches = append(s.Batches, ackedBatch{UUID: uuid, ModelUUID: model})
			}
		}
	}
}

// readTail reads the entries stream after a position, without Follow, so the
// call ends once it has sent what is durable. It returns the records and the
// last position covered.
func readTail(ledger pb.LedgerServiceClient, after uint64) ([]*pb.TailRecord, uint64) {
	ctx, cancel := call()
	defer cancel()
	stream, err := ledger.Tail(ctx, &pb.TailRequest{Stream: pb.Stream_STREAM_ENTRIES, After: after})
	must(err, "Tail")
	var records []*pb.TailRecord
	var last *pb.TailResponse
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(err, fmt.Sprintf("Tail after %d", after))
		records = append(records, r.Records...)
		last = r
	}
	check(last != nil, "Tail after %d: no response", after)
	check(last.CaughtUp, "Tail after %d: the last response is not caught up", after)
	return records, last.Position
}

// tail checks that every recorded entry comes back once, in the order it was
// written, at positions 1, 2, 3..., and that resuming after the first
// position gives the rest: no gap, no duplicate.
func tail(ledger pb.LedgerServiceClient, s *summary) {
	records, end := readTail(ledger, 0)
	check(len(records) == len(s.Entries), "Tail from 0: %d records, want %d", len(records), len(s.Entries))
	check(end == uint64(len(s.Entries)), "Tail from 0: ends at position %d", end)
	for i, r := range records {
		want := s.Entries[i]
		e := r.GetEntry() // the record oneof: an Entry on the entries stream
		check(e != nil, "Tail position %d: not an entry", r.Position)
		check(r.Position == uint64(i+1), "Tail record %d: position %d", i, r.Position)
		check(e.Id == want.ID && rfc3339(e.EmittedAt) == want.EmittedAt, "Tail position %d: %v, want %v", r.Position, e, want)
		check(r.ReceivedAt != nil, "Tail position %d: no received_at", r.Position)
		// Line is the exact ledger line, as Go tooling reads it.
		var line struct{ ID, Kind string }
		must(json.Unmarshal(r.Line, &line), fmt.Sprintf("Tail position %d: line", r.Position))
		check(line.ID == want.ID && line.Kind == want.Kind, "Tail position %d: line %s", r.Position, r.Line)
		s.Tail = append(s.Tail, tailed{Position: r.Position, ID: e.Id, Line: string(r.Line)})
	}

	after := records[0].Position
	rest, _ := readTail(ledger, after)
	s.TailResumed = resumed{After: after, Positions: []uint64{}}
	for _, r := range rest {
		s.TailResumed.Positions = append(s.TailResumed.Positions, r.Position)
	}
	want := []uint64{}
	for _, r := range records[1:] {
		want = append(want, r.Position)
	}
	check(reflect.DeepEqual(s.TailResumed.Positions, want), "Tail after %d: positions %v, want %v", after, s.TailResumed.Positions, want)
}

// usage asks for one UTC day in day buckets. The decimals are exact strings,
// never floats: the VM ran 2 h 30 min 0.25 s with 2 vCPUs and 1 GiB; the
// snapshot (10 GiB) from 09:00 to the end of the day, still open.
func usage(ledger pb.LedgerServiceClient, s *summary) {
	ctx, cancel := call()
	defer cancel()
	stream, err := ledger.Usage(ctx, &pb.UsageRequest{
		StartTime:   timestamppb.New(day),
		EndTime:     timestamppb.New(day.AddDate(0, 0, 1)),
		Granularity: pb.Granularity_GRANULARITY_DAY,
		TimeZone:    "UTC",
	})
	must(err, "Usage")
	var rows []*pb.UsageRow
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		must(err, "Usage")
		rows = append(rows, r.Rows...)
		for _, a := range r.Anomalies {
			s.Anomalies = append(s.Anomalies, a.Type.String())
		}
	}
	check(len(s.Anomalies) == 0, "Usage anomalies: %v", s.Anomalies)

	common := usageRow{
		Hypervisor:  "cloud-hypervisor",
		BucketStart: "2025-03-03T00:00:00Z",
		BucketEnd:   "2025-03-04T00:00:00Z",
		Intervals:   1,
	}
	compute, snapshot := common, common
	compute.Family, compute.ID, compute.RunningNanos, compute.Open = "FAMILY_VM_COMPUTE", "go-vm-1", "9000250000000", false
	compute.VcpuSeconds, compute.MemByteSeconds, compute.StorageByteSeconds = "18000.5", "9663944851456", "0"
	snapshot.Family, snapshot.ID, snapshot.RunningNanos, snapshot.Open = "FAMILY_SNAP_STORAGE", "go-snap-1", "54000000000000", true
	snapshot.VcpuSeconds, snapshot.MemByteSeconds, snapshot.StorageByteSeconds = "0", "0", "579820584960000"
	want := []usageRow{compute, snapshot}

	for _, r := range rows {
		s.Usage = append(s.Usage, usageRow{
			Family:             r.Family.String(),
			ID:                 r.Id,
			Hypervisor:         r.Hypervisor,
			BucketStart:        rfc3339(r.BucketStart),
			BucketEnd:          rfc3339(r.BucketEnd),
			RunningNanos:       fmt.Sprint(r.RunningNanos),
			VcpuSeconds:        r.VcpuSeconds,
			MemByteSeconds:     r.MemByteSeconds,
			StorageByteSeconds: r.StorageByteSeconds,
			Intervals:          r.Intervals,
			Open:               r.Open,
		})
	}
	check(reflect.DeepEqual(s.Usage, want), "Usage rows\n got %+v\nwant %+v", s.Usage, want)
}
