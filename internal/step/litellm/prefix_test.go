package litellm

import "testing"

func TestValidVaultPrefix(t *testing.T) {
	for _, ok := range []string{"litellm/virtual-keys", "/litellm/vk/", "a.b_c-d"} {
		if err := validVaultPrefix(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/", "a//b", "a/../b", "a/./b", "a/$(id)", "a b", "a/\x1b[2J", "a/b?c", "a/%2e%2e"} {
		if err := validVaultPrefix(bad); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}
