package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// A journal is stored as JSON lines: one record per line, each line the
// canonical JSON encoding of the record followed by "\n".

// ErrBadLine marks a line that is not the canonical encoding of a record.
var ErrBadLine = errors.New("bad journal line")

// EncodeLine returns rec's line, newline included.
func EncodeLine(rec Record) ([]byte, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode journal record %d: %w", rec.Seq, err)
	}
	return append(b, '\n'), nil
}

// DecodeLine decodes one line (with or without its final newline). The line
// must be exactly the canonical encoding of a record, as EncodeLine writes
// it: unknown fields, duplicate or differently spelled keys, extra spaces or
// trailing data are refused, so that no change to the bytes of a journal goes
// unnoticed by Verify.
func DecodeLine(line []byte) (Record, error) {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrBadLine, err)
	}
	canon, err := json.Marshal(rec)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrBadLine, err)
	}
	if !bytes.Equal(canon, line) {
		return Record{}, fmt.Errorf("%w: not in canonical form", ErrBadLine)
	}
	return rec, nil
}

// DecodeLines decodes a journal's bytes. A final line without its newline
// is a write torn by a crash: it is not decoded, and complete (the length
// of the bytes up to and including the last newline) tells where it starts.
// A bad complete line is an error naming its line number.
func DecodeLines(data []byte) (recs []Record, complete int, err error) {
	for complete < len(data) {
		nl := bytes.IndexByte(data[complete:], '\n')
		if nl < 0 {
			break
		}
		rec, err := DecodeLine(data[complete : complete+nl])
		if err != nil {
			return recs, complete, fmt.Errorf("journal line %d: %w", len(recs)+1, err)
		}
		recs = append(recs, rec)
		complete += nl + 1
	}
	return recs, complete, nil
}

// EncodeLines returns the lines of recs.
func EncodeLines(recs []Record) ([]byte, error) {
	var buf []byte
	for _, rec := range recs {
		line, err := EncodeLine(rec)
		if err != nil {
			return nil, err
		}
		buf = append(buf, line...)
	}
	return buf, nil
}
