package journal

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// FirstSeq is the sequence number of a journal's first record (its header).
const FirstSeq int64 = 1

// ErrCorrupt marks a journal whose records do not chain, are out of order or
// do not match their hashes. Errors from Verify wrap it.
var ErrCorrupt = errors.New("journal is corrupt")

// CorruptError names the first record of a journal that fails verification.
type CorruptError struct {
	Index  int   // position in the slice given to Verify
	Seq    int64 // the record's own Seq
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("journal record %d (seq %d): %s", e.Index, e.Seq, e.Reason)
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Seal returns rec with Seq and Prev set and Hash computed over Prev and
// every other field. prev is the Hash of the record before ("" for the
// header), seq its Seq plus one (FirstSeq for the header).
//
// The record returned is rec as its encoding will read back: invalid UTF-8
// in strings is replaced by U+FFFD and times keep only what their text
// holds. A record that cannot be encoded (a time outside years 0-9999) is
// returned with an empty Hash, which no store accepts.
func Seal(prev string, seq int64, rec Record) Record {
	rec.Seq = seq
	rec.Prev = prev
	rec.Hash = ""
	b, err := json.Marshal(rec)
	if err != nil {
		return rec
	}
	var norm Record
	if err := json.Unmarshal(b, &norm); err != nil {
		return rec
	}
	norm.Hash, _ = hashOf(norm)
	return norm
}

// Sealed reports whether rec's Hash matches its content.
func Sealed(rec Record) bool {
	h, err := hashOf(rec)
	return err == nil && rec.Hash != "" && h == rec.Hash
}

// hashOf is the hex SHA-256 of rec.Prev, a newline and the canonical JSON
// encoding of rec with Hash cleared. encoding/json gives a canonical form for
// Record: struct fields come in declaration order, map keys sorted, times in
// RFC 3339 with nanoseconds.
func hashOf(rec Record) (string, error) {
	rec.Hash = ""
	b, err := json.Marshal(rec)
	if err != nil {
		return "", fmt.Errorf("encode journal record %d: %w", rec.Seq, err)
	}
	h := sha256.New()
	h.Write([]byte(rec.Prev))
	h.Write([]byte{'\n'})
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Verify checks that recs is a whole journal, or its beginning: Seq counts
// up from FirstSeq, each record's Prev is the Hash of the one before (""
// for the first), and each Hash matches its record. The error names the
// first record that fails and wraps ErrCorrupt.
func Verify(recs []Record) error {
	prev := ""
	for i, rec := range recs {
		if want := FirstSeq + int64(i); rec.Seq != want {
			return &CorruptError{Index: i, Seq: rec.Seq, Reason: fmt.Sprintf("seq is %d, want %d", rec.Seq, want)}
		}
		if rec.Prev != prev {
			return &CorruptError{Index: i, Seq: rec.Seq, Reason: "prev does not match the hash of the record before"}
		}
		if !Sealed(rec) {
			return &CorruptError{Index: i, Seq: rec.Seq, Reason: "hash does not match the record"}
		}
		prev = rec.Hash
	}
	return nil
}

// CheckNext reports why rec cannot follow a journal whose last record has
// hash lastHash and sequence lastSeq (lastHash "" and lastSeq 0 for an empty
// journal), or nil if it can. Stores use it to refuse a record that would
// fork or break the chain.
func CheckNext(lastHash string, lastSeq int64, rec Record) error {
	if _, err := hashOf(rec); err != nil {
		return err
	}
	switch {
	case rec.Seq != lastSeq+1:
		return fmt.Errorf("record seq is %d, want %d", rec.Seq, lastSeq+1)
	case rec.Prev != lastHash:
		return fmt.Errorf("record %d prev does not match the last hash", rec.Seq)
	case !Sealed(rec):
		return fmt.Errorf("record %d hash does not match its content", rec.Seq)
	}
	return nil
}

// Chain seals records one after another. The zero Chain starts a journal.
type Chain struct {
	Last string // Hash of the last record sealed ("" before the header)
	Seq  int64  // Seq of the last record sealed (0 before the header)
}

// Seal seals rec as the next record and advances the chain.
func (c *Chain) Seal(rec Record) Record {
	rec = Seal(c.Last, c.Seq+1, rec)
	c.Last, c.Seq = rec.Hash, rec.Seq
	return rec
}
