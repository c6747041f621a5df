package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
    access_log {{.Dir}}/access.log;
    client_body_temp_path {{.Dir}}/tmp/body;
    proxy_temp_path {{.Dir}}/tmp/proxy;
    fastcgi_temp_path {{.Dir}}/tmp/fastcgi;
    uwsgi_temp_path {{.Dir}}/tmp/uwsgi;
    scgi_temp_path {{.Dir}}/tmp/scgi;

    upstream litellm {
{{- range .Servers}}
        server {{.}}:4000 max_fails=1 fail_timeout=2s;
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
	var b strings.Builder
	if err := nginxTmpl.Execute(&b, map[string]any{"Dir": dir, "Listen": n.Addr, "Servers": servers}); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
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
