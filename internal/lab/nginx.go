package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// NginxBin is Debian's nginx.
var NginxBin = "/usr/sbin/nginx"

// ErrNoNginx means nginx is not installed.
var ErrNoNginx = errors.New("nginx not found")

// Nginx is the load balancer in front of the gateways, in the root network
// namespace on a loopback port.
type Nginx struct {
	Dir  string
	Addr string // 127.0.0.1:PORT
	PID  int
	// Drained names the gateways (gw1, ...) marked down in the upstream:
	// nginx sends them no request until they are undrained.
	Drained []string `json:"Drained,omitempty"`
}

const nginxConf = `# runbook lab load balancer: round robin over every gateway, with passive
# health checks, as production LiteLLM gateways are deployed.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;

events {
    worker_connections 1024;
}

http {
    # $upstream_addr: which gateways served each request (tests count
    # requests per gateway from it).
    log_format upstream '$remote_addr [$time_local] "$request" $status $request_time '
                        'upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {{.Dir}}/access.log upstream;
    client_body_temp_path {{.Dir}}/tmp/body;
    proxy_temp_path {{.Dir}}/tmp/proxy;
    fastcgi_temp_path {{.Dir}}/tmp/fastcgi;
    uwsgi_temp_path {{.Dir}}/tmp/uwsgi;
    scgi_temp_path {{.Dir}}/tmp/scgi;

    upstream litellm {
{{- range .Servers}}
        server {{.Addr}}:4000{{if .Down}} down{{end}} max_fails=1 fail_timeout=2s;
{{- end}}
        keepalive 32;
    }

    server {
        listen {{.Listen}};
        location / {
            proxy_pass http://litellm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 500ms;
            proxy_read_timeout 30s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 0;
            proxy_next_upstream_timeout 10s;
        }
    }
}
`

var nginxTmpl = template.Must(template.New("nginx").Parse(nginxConf))

// upstreamServer is one gateway in the upstream; Down marks it drained.
type upstreamServer struct {
	Addr string
	Down bool
}

// render is nginx.conf for servers.
func (n *Nginx) render(servers []upstreamServer) (string, error) {
	var b strings.Builder
	if err := nginxTmpl.Execute(&b, map[string]any{"Dir": n.Dir, "Listen": n.Addr, "Servers": servers}); err != nil {
		return "", err
	}
	return b.String(), nil
}

// StartNginx writes the configuration into dir and starts nginx on
// 127.0.0.1:port in front of servers (addresses; port 4000 each).
func StartNginx(ctx context.Context, dir string, port int, servers []string) (*Nginx, error) {
	if !isExec(NginxBin) {
		return nil, fmt.Errorf("start nginx: %w at %s", ErrNoNginx, NginxBin)
	}
	for _, d := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, "tmp", d), 0o700); err != nil {
			return nil, fmt.Errorf("start nginx: %w", err)
		}
	}
	n := &Nginx{Dir: dir, Addr: "127.0.0.1:" + strconv.Itoa(port)}
	ups := make([]upstreamServer, len(servers))
	for i, s := range servers {
		ups[i] = upstreamServer{Addr: s}
	}
	text, err := n.render(ups)
	if err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	pidFile := filepath.Join(dir, "nginx.pid")
	_ = os.Remove(pidFile)
	// In the foreground ("daemon off"), as the lab's child: the caller
	// reaps it when it ends.
	pid, err := daemon(NginxBin, []string{"-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")},
		minimalEnv(), filepath.Join(dir, "nginx.out"))
	if err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	n.PID = pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(pidFile); err == nil && listensOn(pid, port) {
			return n, nil
		}
		if !alive(pid) {
			return n, fmt.Errorf("start nginx on %s: exited%s", n.Addr, fileTail(filepath.Join(dir, "error.log")))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return n, fmt.Errorf("start nginx on %s: does not listen%s", n.Addr, fileTail(filepath.Join(dir, "error.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Running reports whether the master process runs and the port listens.
func (n *Nginx) Running() bool {
	if !runs(n.PID, "nginx") {
		return false
	}
	c, err := net.DialTimeout("tcp", n.Addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Stop stops nginx: its master and its workers.
func (n *Nginx) Stop() error {
	if n.PID == 0 {
		return nil
	}
	workers := childrenOf(n.PID)
	if err := terminate(5*time.Second, append([]int{n.PID}, workers...)...); err != nil {
		return fmt.Errorf("stop nginx: %w", err)
	}
	return nil
}

// childrenOf lists the direct children of pid.
func childrenOf(pid int) []int {
	var kids []int
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	for _, f := range strings.Fields(string(b)) {
		if k, err := strconv.Atoi(f); err == nil {
			kids = append(kids, k)
		}
	}
	return kids
}

// DrainTimeout bounds how long Drain and Undrain wait for the nginx
// workers from before their reload to exit (a context deadline that comes
// sooner wins).
var DrainTimeout = 30 * time.Second

// Drain takes gateway (its inventory name, such as gw1, or its address)
// out of the lab's nginx: it marks the gateway's upstream server down in
// nginx.conf and in the lab's state, reloads nginx and returns once every
// worker from before the reload has exited. Old workers finish the
// requests they have in flight and close their idle upstream connections
// as they go, so when Drain returns no nginx worker can send the gateway a
// request, and the gateway can be restarted without nginx reusing a
// connection it closes. Draining a drained gateway does nothing. The mark
// stays across reloads and across Up of this lab.
func (l *Lab) Drain(ctx context.Context, gateway string) error {
	return l.setDrained(ctx, gateway, true)
}

// Undrain puts gateway back into the lab's nginx, as Drain takes it out:
// it returns once the workers from before the reload have exited, so every
// worker may send the gateway requests. Undraining a gateway that is not
// drained does nothing.
func (l *Lab) Undrain(ctx context.Context, gateway string) error {
	return l.setDrained(ctx, gateway, false)
}

func (l *Lab) setDrained(ctx context.Context, gateway string, drain bool) error {
	op := "undrain"
	if drain {
		op = "drain"
	}
	var name string
	err := withFileLock(filepath.Join(l.Dir, ".lock"), func() error {
		st, err := readState(l.Dir)
		if err != nil {
			return err
		}
		if st.Partial {
			return errors.New("the lab did not finish coming up")
		}
		if st.Nginx == nil {
			return errors.New("the lab runs no nginx")
		}
		g := findGateway(st.Gateways, gateway)
		if g == nil {
			var names []string
			for _, g := range st.Gateways {
				names = append(names, g.Name)
			}
			return fmt.Errorf("no such gateway in the lab (it has %s)", strings.Join(names, ", "))
		}
		name = g.Name
		drained := withMember(st.Nginx.Drained, g.Name, drain)
		if err := st.Nginx.apply(ctx, st.Gateways, drained); err != nil {
			return err
		}
		st.Nginx.Drained = drained
		if err := st.write(); err != nil {
			return err
		}
		if l.Nginx != nil {
			l.Nginx.Drained = drained
		}
		return nil
	})
	if err != nil {
		if name != "" && name != gateway {
			gateway = name + " (" + gateway + ")"
		}
		return fmt.Errorf("%s %s: %w", op, gateway, err)
	}
	return nil
}

// findGateway returns the gateway called name or at address name, or nil.
func findGateway(gws []*Gateway, name string) *Gateway {
	for _, g := range gws {
		if g.Name == name || g.Address == name {
			return g
		}
	}
	return nil
}

// withMember returns the sorted set names with name in it or not.
func withMember(names []string, name string, in bool) []string {
	var out []string
	for _, n := range names {
		if n != name {
			out = append(out, n)
		}
	}
	if in {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// apply makes nginx run with drained marked down: it writes nginx.conf
// (checked with nginx -t first), reloads nginx and waits until the workers
// from before the reload have exited. When nginx.conf and the state say so
// already, it does nothing: the state changes only after such a wait.
func (n *Nginx) apply(ctx context.Context, gws []*Gateway, drained []string) error {
	servers := make([]upstreamServer, len(gws))
	for i, g := range gws {
		servers[i] = upstreamServer{Addr: g.Address, Down: slices.Contains(drained, g.Name)}
	}
	text, err := n.render(servers)
	if err != nil {
		return err
	}
	conf := filepath.Join(n.Dir, "nginx.conf")
	if old, err := os.ReadFile(conf); err == nil && string(old) == text && slices.Equal(drained, n.Drained) {
		return nil
	}
	if !runs(n.PID, "nginx") {
		return fmt.Errorf("nginx (pid %d) does not run", n.PID)
	}
	tmp := conf + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return err
	}
	if _, err := run(ctx, nil, NginxBin, "-t", "-q", "-p", n.Dir, "-c", tmp, "-e", filepath.Join(n.Dir, "error.log")); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("check nginx configuration: %w", err)
	}
	if err := os.Rename(tmp, conf); err != nil {
		return err
	}
	return n.reload(ctx)
}

// reload sends nginx's master SIGHUP and waits until every worker it had
// before has exited and a new one runs. On SIGHUP the master starts
// workers with the configuration read again and tells the old ones to
// finish their requests and exit.
func (n *Nginx) reload(ctx context.Context) error {
	start := time.Now()
	deadline := start.Add(DrainTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	old := childrenOf(n.PID)
	if err := syscall.Kill(n.PID, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload nginx: %w", err)
	}
	errorLog := filepath.Join(n.Dir, "error.log")
	for {
		var left []string
		for _, pid := range old {
			if alive(pid) {
				left = append(left, strconv.Itoa(pid))
			}
		}
		if len(left) == 0 && slices.ContainsFunc(childrenOf(n.PID), func(pid int) bool {
			return !slices.Contains(old, pid) && alive(pid)
		}) {
			return nil
		}
		if !alive(n.PID) {
			return fmt.Errorf("reload nginx: the master process exited%s", fileTail(errorLog))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if len(left) == 0 {
				return fmt.Errorf("reload nginx: no new worker process after %s%s",
					time.Since(start).Round(time.Millisecond), fileTail(errorLog))
			}
			return fmt.Errorf("reload nginx: worker processes %s from before the reload still run after %s (they may still send requests to the gateway)%s",
				strings.Join(left, ", "), time.Since(start).Round(time.Millisecond), fileTail(errorLog))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
