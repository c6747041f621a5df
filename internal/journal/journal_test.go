package journal

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 14, 9, 26, 53, 589793238, time.UTC)

// sample is a sealed journal of a run that failed, was resumed and is in
// progress again.
func sample() []Record {
	var c Chain
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	recs := []Record{
		{Time: at(0), Type: THeader, Header: &Header{
			RunID: "20260314T092653Z-ab12", Runbook: "rotate-master-key", RunbookFile: "runbooks/rotate.yaml",
			RunbookDigest: "sha256:aa", InventoryFile: "inv/prod.yaml", InventoryDigest: "sha256:bb",
			Environment: "production", Target: "production/gateways", Inputs: map[string]string{"reason": "leak", "batch": "2"},
			Reason: "key leaked in a paste <&>", Operator: "alice", Hostname: "ops1", PID: 4242, Started: at(0), Drill: true,
			Phases: []Phase{{Name: "contain", Target: "5m0s", Steps: []string{"stop", "drop"}}, {Name: "recover", Steps: []string{}}},
			Steps:  []StepInfo{{ID: "stop", Kind: "service.stop", Phase: "contain"}, {ID: "drop", Kind: "firewall.drop", Name: "drop traffic"}},
		}},
		{Time: at(1), Type: TOK, Step: "stop", Host: "gw1", Outputs: map[string]string{"state": "stopped"}},
		{Time: at(2), Type: TIntent, Step: "drop", Host: "gw1", Change: "add DROP rule", Attempt: 1},
		{Time: at(3), Type: TDone, Step: "drop", Host: "gw1", Change: "added DROP rule", Attempt: 1, Began: ptr(at(2)), Outputs: map[string]string{"rule": "-A INPUT -j DROP"}},
		{Time: at(4), Type: TIntent, Step: "drop", Host: "gw2", Change: "add DROP rule", Attempt: 1},
		{Time: at(5), Type: TSkipped, Step: "notify"},
		{Time: at(6), Type: TFailed, Step: "vault", Error: "vault: 503 \"unavailable\"\n", Attempt: 3},
		{Time: at(7), Type: TNote, Note: &Note{Kind: "key_fingerprint", Fields: map[string]string{"sha256": "c0ffee"}, Text: "ünïcödé\ttab"}},
		{Time: at(8), Type: TEnd, End: &End{Status: StatusFailed, Error: "step vault failed"}},
		{Time: at(60), Type: TResumed},
		{Time: at(61), Type: TDone, Step: "drop", Host: "gw2", Change: "added DROP rule", Attempt: 1},
	}
	for i := range recs {
		recs[i] = c.Seal(recs[i])
	}
	return recs
}

func ptr[T any](v T) *T { return &v }

func TestSealVerify(t *testing.T) {
	recs := sample()
	if err := Verify(recs); err != nil {
		t.Fatal(err)
	}
	if recs[0].Seq != FirstSeq || recs[0].Prev != "" {
		t.Fatalf("header seq %d prev %q", recs[0].Seq, recs[0].Prev)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Prev != recs[i-1].Hash || recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("record %d does not chain", i)
		}
	}
	// Sealing is deterministic and ignores a stale Seq, Prev or Hash.
	again := recs[3]
	again.Hash, again.Seq, again.Prev = "junk", 99, "junk"
	if got := Seal(recs[2].Hash, recs[3].Seq, again); !reflect.DeepEqual(got, recs[3]) {
		t.Fatalf("reseal differs:\n%+v\n%+v", got, recs[3])
	}
	// The same content in another time zone is another record.
	other := recs[3]
	other.Time = other.Time.In(time.FixedZone("X", 3600))
	if Seal(recs[2].Hash, recs[3].Seq, other).Hash == recs[3].Hash {
		t.Fatal("time zone not covered by the hash")
	}
	if err := Verify(nil); err != nil {
		t.Fatalf("empty journal: %v", err)
	}
}

func TestVerifyNamesFirstBadRecord(t *testing.T) {
	cases := []struct {
		name   string
		mutate func([]Record) []Record
		index  int
		reason string
	}{
		{"dropped record", func(r []Record) []Record { return append(r[:4:4], r[5:]...) }, 4, "seq is 6, want 5"},
		{"swapped records", func(r []Record) []Record { r[2], r[3] = r[3], r[2]; return r }, 2, "seq is 4, want 3"},
		{"no header", func(r []Record) []Record { return r[1:] }, 0, "seq is 2, want 1"},
		{"resealed in place", func(r []Record) []Record {
			r[5].Step = "other"
			r[5] = Seal(r[5].Prev, r[5].Seq, r[5])
			return r
		}, 6, "prev does not match"},
		{"edited", func(r []Record) []Record { r[7].Note.Text = "x"; return r }, 7, "hash does not match"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.mutate(sample()))
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want a CorruptError", err)
			}
			if ce.Index != tc.index || !strings.Contains(ce.Reason, tc.reason) {
				t.Fatalf("err = %v, want index %d and %q", err, tc.index, tc.reason)
			}
		})
	}
}

// mutations returns, for every field reachable in rec (through pointers,
// structs and maps), a function that changes that field in place.
func mutations(v reflect.Value, path string, out map[string]func()) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			out[path+"(set)"] = func() { v.Set(reflect.New(v.Type().Elem())) }
			return
		}
		out[path+"(nil)"] = func() { v.Set(reflect.Zero(v.Type())) }
		mutations(v.Elem(), path, out)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			out[path] = func() { v.Set(reflect.ValueOf(v.Interface().(time.Time).Add(time.Nanosecond))) }
			return
		}
		for i := range v.NumField() {
			mutations(v.Field(i), path+"."+v.Type().Field(i).Name, out)
		}
	case reflect.Map:
		out[path+"(add)"] = func() {
			if v.IsNil() {
				v.Set(reflect.MakeMap(v.Type()))
			}
			v.SetMapIndex(reflect.ValueOf("new"), reflect.ValueOf("v"))
		}
		for _, k := range v.MapKeys() {
			out[path+"["+k.String()+"]"] = func() {
				v.SetMapIndex(k, reflect.ValueOf(v.MapIndex(k).String()+"!"))
			}
			out[path+"(rekey "+k.String()+")"] = func() {
				val := v.MapIndex(k)
				v.SetMapIndex(k, reflect.Value{})
				v.SetMapIndex(reflect.ValueOf(k.String()+"!"), val)
			}
		}
	case reflect.Slice:
		out[path+"(append)"] = func() { v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem()))) }
		if v.Len() > 0 {
			out[path+"(drop)"] = func() { v.Set(v.Slice(0, v.Len()-1)) }
		}
		for i := range v.Len() {
			mutations(v.Index(i), fmt.Sprintf("%s[%d]", path, i), out)
		}
	case reflect.String:
		out[path] = func() {
			s := []byte(v.String())
			if len(s) == 0 {
				s = []byte("x")
			} else {
				s[len(s)/2] ^= 1
			}
			v.SetString(string(s))
		}
	case reflect.Int, reflect.Int64:
		out[path] = func() { v.SetInt(v.Int() + 1) }
	case reflect.Bool:
		out[path] = func() { v.SetBool(!v.Bool()) }
	default:
		panic("mutations: unhandled kind " + v.Kind().String() + " at " + path)
	}
}

// TestTamperAnyField changes every field of every record, one at a time:
// Verify must fail and name that record.
func TestTamperAnyField(t *testing.T) {
	n := 0
	for i := range sample() {
		probe := sample()
		muts := map[string]func(){}
		mutations(reflect.ValueOf(&probe[i]).Elem(), "", muts)
		for name := range muts {
			recs := sample()
			m := map[string]func(){}
			mutations(reflect.ValueOf(&recs[i]).Elem(), "", m)
			m[name]()
			n++
			err := Verify(recs)
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Index != i {
				t.Errorf("record %d field %s changed: Verify = %v", i, name, err)
			}
		}
	}
	if n < 100 {
		t.Fatalf("only %d mutations tried", n)
	}
}

// TestTamperAnyByte changes every byte of the stored journal, in two ways:
// decoding or verifying must notice. (Changing the final newline turns the
// last record into a torn write, which DecodeLines drops: that shows as a
// missing record, which is what a chain can say about a cut tail.)
func TestTamperAnyByte(t *testing.T) {
	recs := sample()
	data, err := EncodeLines(recs)
	if err != nil {
		t.Fatal(err)
	}
	for pos := range data {
		for _, b := range []byte{data[pos] ^ 0x01, data[pos] ^ 0x20} {
			bad := bytes.Clone(data)
			bad[pos] = b
			got, _, err := DecodeLines(bad)
			if err != nil {
				continue
			}
			if len(got) < len(recs) {
				if pos != len(data)-1 {
					t.Errorf("byte %d -> %q: lost a record silently", pos, b)
				}
				continue
			}
			if Verify(got) == nil {
				t.Errorf("byte %d (%q -> %q) changed and the journal still verifies", pos, data[pos], b)
			}
		}
	}
}

func TestLines(t *testing.T) {
	recs := sample()
	data, err := EncodeLines(recs)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(data, []byte{'\n'}) != len(recs) {
		t.Fatal("not one line per record")
	}
	got, n, err := DecodeLines(data)
	if err != nil || n != len(data) {
		t.Fatalf("decode: n=%d err=%v", n, err)
	}
	if !reflect.DeepEqual(got, recs) {
		t.Fatal("round trip differs")
	}
	// A torn final line is left out, and complete says where it starts.
	torn := append(bytes.Clone(data), data[:40]...)
	got, n, err = DecodeLines(torn)
	if err != nil || n != len(data) || len(got) != len(recs) {
		t.Fatalf("torn tail: n=%d len=%d err=%v", n, len(got), err)
	}
	// A bad complete line is an error naming it.
	bad := bytes.Replace(data, []byte(`"type":"ok"`), []byte(`"type": "ok"`), 1)
	if _, _, err := DecodeLines(bad); err == nil || !strings.Contains(err.Error(), "journal line 2") || !errors.Is(err, ErrBadLine) {
		t.Fatalf("bad line: %v", err)
	}
	for _, line := range []string{
		``, `{}`, `null`, `[]`, `{"seq":1}{"seq":1}`,
		strings.Replace(string(data[:bytes.IndexByte(data, '\n')]), `"seq"`, `"SEQ"`, 1),
		strings.Replace(string(data[:bytes.IndexByte(data, '\n')]), `"seq":1`, `"seq":1,"x":2`, 1),
	} {
		if _, err := DecodeLine([]byte(line)); err == nil {
			t.Errorf("DecodeLine(%q) accepted", line)
		}
	}
}

func TestUnencodableRecord(t *testing.T) {
	rec := Seal("", FirstSeq, Record{Type: THeader, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Header: &Header{}})
	if rec.Hash != "" || Sealed(rec) {
		t.Fatalf("sealed a record that cannot be encoded: %q", rec.Hash)
	}
	if err := CheckNext("", 0, rec); err == nil {
		t.Fatal("CheckNext accepted it")
	}
}

func TestCheckNext(t *testing.T) {
	recs := sample()
	if err := CheckNext("", 0, recs[0]); err != nil {
		t.Fatal(err)
	}
	if err := CheckNext(recs[2].Hash, recs[2].Seq, recs[3]); err != nil {
		t.Fatal(err)
	}
	if err := CheckNext(recs[3].Hash, recs[3].Seq, recs[3]); err == nil {
		t.Fatal("accepted a repeated record")
	}
	if err := CheckNext(recs[1].Hash, recs[2].Seq, recs[3]); err == nil {
		t.Fatal("accepted a fork")
	}
	r := recs[3]
	r.Change = "forged"
	if err := CheckNext(recs[2].Hash, recs[2].Seq, r); err == nil {
		t.Fatal("accepted a record whose hash does not match")
	}
}

func TestReplay(t *testing.T) {
	recs := sample()
	st, err := Replay(recs[:9])
	if err != nil {
		t.Fatal(err)
	}
	if st.Header.RunID != "20260314T092653Z-ab12" || st.Attempts != 1 || st.Records != 9 {
		t.Fatalf("header %q attempts %d records %d", st.Header.RunID, st.Attempts, st.Records)
	}
	if st.Status() != StatusFailed || st.StatusGiven(false) != StatusFailed || st.End.Error != "step vault failed" {
		t.Fatalf("status %q / %q", st.Status(), st.StatusGiven(false))
	}
	want := map[Key]Action{
		{"stop", "gw1"}:   ActionSkip,
		{"drop", "gw1"}:   ActionSkip,
		{"drop", "gw2"}:   ActionRecheck,
		{"notify", ""}:    ActionSkip,
		{"vault", ""}:     ActionRetry,
		{"rollout", ""}:   ActionRun,
		{"stop", "gw2"}:   ActionRun,
		{"notify", "gw1"}: ActionRun,
	}
	for k, a := range want {
		if got := st.Action(k.Step, k.Host); got != a {
			t.Errorf("Action(%s) = %s, want %s", k, got, a)
		}
	}
	var order []string
	for _, w := range st.Work {
		order = append(order, w.Key.String())
	}
	if got := strings.Join(order, ","); got != "stop on gw1,drop on gw1,drop on gw2,notify,vault" {
		t.Fatalf("work order %s", got)
	}
	if got := st.Outputs("drop", "gw1")["rule"]; got != "-A INPUT -j DROP" {
		t.Fatalf("outputs %q", got)
	}
	if st.Outputs("drop", "gw2") != nil || st.Outputs("vault", "") != nil {
		t.Fatal("outputs of unfinished work")
	}
	w := st.Lookup("vault", "")
	if w.Attempt != 3 || w.Error == "" || w.Status != TFailed {
		t.Fatalf("vault work %+v", w)
	}
	if w := st.Lookup("drop", "gw1"); w.Intents != 1 || w.Change != "added DROP rule" || !w.First.Equal(t0.Add(2*time.Second)) || !w.Began.Equal(t0.Add(2*time.Second)) || !w.Updated.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("drop gw1 %+v", w)
	}
	if u := st.Unfinished(); len(u) != 2 || u[0].Key != (Key{"drop", "gw2"}) || u[1].Key != (Key{"vault", ""}) {
		t.Fatalf("unfinished %v", u)
	}
	if len(st.Notes) != 1 || st.Notes[0].Note.Kind != "key_fingerprint" {
		t.Fatalf("notes %v", st.Notes)
	}
	if st.LastHash() != recs[8].Hash || st.NextSeq() != 10 {
		t.Fatalf("last hash / next seq %q %d", st.LastHash(), st.NextSeq())
	}

	// After the resume, the last attempt has no end yet.
	st, err = Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Attempts != 2 || st.End != nil {
		t.Fatalf("attempts %d end %v", st.Attempts, st.End)
	}
	if st.Status() != StatusRunning || st.StatusGiven(true) != StatusRunning || st.StatusGiven(false) != StatusInterrupted {
		t.Fatalf("status %q %q %q", st.Status(), st.StatusGiven(true), st.StatusGiven(false))
	}
	if st.Action("drop", "gw2") != ActionSkip {
		t.Fatal("drop on gw2 done after resume")
	}
	if !st.Updated.Equal(t0.Add(61 * time.Second)) {
		t.Fatalf("updated %v", st.Updated)
	}
	// The chain continues where the journal ends.
	c := st.Chain()
	next := c.Seal(Record{Time: t0.Add(62 * time.Second), Type: TEnd, End: &End{Status: StatusSucceeded}})
	if err := Verify(append(recs, next)); err != nil {
		t.Fatal(err)
	}
	st, err = Replay(append(recs, next))
	if err != nil || st.Status() != StatusSucceeded || st.StatusGiven(false) != StatusSucceeded {
		t.Fatalf("after end: %v %v", st, err)
	}
}

func TestReplayRefusesBadStructure(t *testing.T) {
	reseal := func(recs []Record) []Record {
		var c Chain
		for i := range recs {
			recs[i] = c.Seal(recs[i])
		}
		return recs
	}
	hdr := Record{Type: THeader, Header: &Header{RunID: "r"}}
	cases := map[string][]Record{
		"empty":          nil,
		"no header":      reseal([]Record{{Type: TOK, Step: "a"}}),
		"header no body": reseal([]Record{{Type: THeader}}),
		"second header":  reseal([]Record{hdr, hdr}),
		"stepless":       reseal([]Record{hdr, {Type: TDone}}),
		"unknown type":   reseal([]Record{hdr, {Type: "bogus", Step: "a"}}),
		"end no body":    reseal([]Record{hdr, {Type: TEnd}}),
		"end bad status": reseal([]Record{hdr, {Type: TEnd, End: &End{Status: "running"}}}),
		"note no body":   reseal([]Record{hdr, {Type: TNote}}),
		"tampered":       func() []Record { r := sample(); r[4].Host = "gw3"; return r }(),
	}
	for name, recs := range cases {
		if _, err := Replay(recs); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func FuzzDecodeLine(f *testing.F) {
	data, err := EncodeLines(sample())
	if err != nil {
		f.Fatal(err)
	}
	for _, line := range bytes.SplitAfter(data, []byte{'\n'}) {
		f.Add(line)
	}
	f.Add([]byte(`{"seq":1,"time":"0001-01-01T00:00:00Z","type":"","prev":"","hash":""}`))
	f.Add([]byte(`{"seq":1e3}`))
	f.Add([]byte("\xff\n"))
	f.Fuzz(func(t *testing.T, line []byte) {
		rec, err := DecodeLine(line)
		if err == nil {
			enc, err := EncodeLine(rec)
			if err != nil {
				t.Fatalf("decoded record does not encode: %v", err)
			}
			if !bytes.Equal(enc, append(bytes.TrimSuffix(line, []byte{'\n'}), '\n')) {
				t.Fatalf("decoded %q but it encodes as %q", line, enc)
			}
			_ = Sealed(rec)
		}
		recs, n, err := DecodeLines(line)
		if n > len(line) || (err == nil && n < len(line) && bytes.IndexByte(line[n:], '\n') >= 0) {
			t.Fatalf("complete = %d of %d", n, len(line))
		}
		if err == nil {
			_ = Verify(recs)
			_, _ = Replay(recs)
		}
	})
}

// Seal returns the record as it reads back, so that a record holding bytes
// that are not UTF-8 (command output) still verifies after a round trip.
func TestSealNormalizes(t *testing.T) {
	local := time.FixedZone("X", -5*3600)
	rec := Seal("", FirstSeq, Record{Time: t0.In(local), Type: THeader, Error: "bad \xff\xfe byte", Header: &Header{RunID: "r", Inputs: map[string]string{"\xff": "\x00"}}})
	if rec.Error != "bad \ufffd\ufffd byte" {
		t.Fatalf("error %q", rec.Error)
	}
	line, err := EncodeLine(rec)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeLine(line)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify([]Record{back}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, rec) {
		t.Fatalf("round trip differs:\n%+v\n%+v", back, rec)
	}
}

// BenchmarkSeal measures what a store pays per record beside its write:
// sealing, checking the chain and encoding the line.
func BenchmarkSeal(b *testing.B) {
	var c Chain
	c.Seal(sample()[0])
	for i := range b.N {
		last, seq := c.Last, c.Seq
		rec := c.Seal(Record{Time: t0, Type: TDone, Step: "restart", Host: "gw1", Change: "restarted litellm", Attempt: 1, Outputs: map[string]string{"pid": fmt.Sprint(i)}})
		if err := CheckNext(last, seq, rec); err != nil {
			b.Fatal(err)
		}
		if _, err := EncodeLine(rec); err != nil {
			b.Fatal(err)
		}
	}
}
