package ssh

// KillConnForTest closes the TCP connection under t's client as a network
// failure would.
func KillConnForTest(t *Transport) { t.killConnForTest() }

// SessionsForTest is the number of sessions t has opened.
func SessionsForTest(t *Transport) int64 { return t.sessions.Load() }
