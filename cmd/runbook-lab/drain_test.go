package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// drain and undrain find the lab in --dir, else in $RUNBOOK_LAB_DIR; a
// directory without a lab is an error that names it.
func TestDrainLabDir(t *testing.T) {
	base := t.TempDir()
	envDir := filepath.Join(base, "from-env")
	flagDir := filepath.Join(base, "from-flag")
	for _, tc := range []struct {
		env  string
		args []string
		want string
	}{
		{envDir, []string{"drain", "gw1"}, envDir},
		{envDir, []string{"undrain", "gw1"}, envDir},
		{envDir, []string{"drain", "--dir", flagDir, "gw1"}, flagDir},
		{"", []string{"undrain", "gw1"}, ".lab"},
	} {
		t.Setenv(labDirEnv, tc.env)
		var out bytes.Buffer
		cmd := newRootCommand(&out)
		cmd.SetArgs(tc.args)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), "load lab in ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s with %s=%q: %v, want an error naming %s", strings.Join(tc.args, " "), labDirEnv, tc.env, err, tc.want)
		}
	}
	cmd := newRootCommand(&bytes.Buffer{})
	cmd.SetArgs([]string{"drain"})
	if err := cmd.Execute(); err == nil {
		t.Error("drain without a gateway: no error")
	}
}
