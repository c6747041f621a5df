package ssh

// KillConnForTest closes the TCP connection under t's client as a network
// failure would.
func KillConnForTest(t *Transport) { t.killConnForTest() }
