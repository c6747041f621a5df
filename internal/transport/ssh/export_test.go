package ssh

// KillConnForTest closes the TCP connection under t's client as a network
// failure would.
func KillConnForTest(t *Transport) { t.killConnForTest() }

// SessionsForTest is the number of sessions t has opened.
func SessionsForTest(t *Transport) int64 { return t.sessions.Load() }

// ConfigLookupForTest parses file and looks name up in it.
func ConfigLookupForTest(file, name string) (hostName, user string, port int, jump string, err error) {
	c, err := parseSSHConfig(file)
	if err != nil {
		return "", "", 0, "", err
	}
	o := c.lookup(name)
	return o.HostName, o.User, o.Port, o.ProxyJump, nil
}

// JumpsForTest lists the jump hosts d holds connections to.
func JumpsForTest(d *Dialer) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for spec := range d.jumps {
		out = append(out, spec)
	}
	return out
}

// NewPIDWriterForTest returns the stderr writer of sessions.
func NewPIDWriterForTest() interface {
	Write([]byte) (int, error)
	PID() int
	Bytes() []byte
} {
	return &pidWriter{}
}
