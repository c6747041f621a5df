package lab

import (
	"errors"
	"fmt"
)

// Available reports whether everything cfg needs is on this machine, and if
// not, what is missing (an error matching IsMissing). It builds nothing.
func Available(cfg Config) error {
	var errs []error
	if cfg.Gateways > 0 {
		errs = append(errs, hostsAvailable())
	}
	if cfg.Postgres {
		errs = append(errs, PostgresAvailable())
	}
	if cfg.Nginx && !isExec(NginxBin) {
		errs = append(errs, fmt.Errorf("%w at %s", ErrNoNginx, NginxBin))
	}
	if (cfg.Vault || (cfg.Postgres && cfg.Gateways > 0 && cfg.GatewayBinary == "")) && !sourceFound() {
		errs = append(errs, ErrNoSource)
	}
	return errors.Join(errs...)
}

// IsMissing reports whether err says that something the lab needs is not
// on this machine (as opposed to something that failed).
func IsMissing(err error) bool {
	return errors.Is(err, ErrNoSSHD) || errors.Is(err, ErrNoPostgres) ||
		errors.Is(err, ErrNoNginx) || errors.Is(err, ErrNoSource)
}

func sourceFound() bool {
	_, err := SourceRoot()
	return err == nil
}
