// A Go net/http worker for handover: takes its socket by fd or by name, says READY=1, drains
// politely.
//
//	go-worker [--socket NAME]
//
// Without --socket it serves on fd 3, the first socket handover (or systemd) passes; with it,
// on the socket of that name in LISTEN_FDNAMES. Started without a socket at all, it listens
// on 127.0.0.1:8080.
//
// http.Server's Shutdown (and SetKeepAlivesEnabled(false)) closes idle keep-alive
// connections at once, also those a request is on its way on, and the requests it lets
// finish are not told "Connection: close". This worker answers with "Connection: close"
// while draining and calls Shutdown only when the connections left have been idle a second.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// After the stop signal, an idle connection is kept this long for a request that is still
	// to come; only connections idle for this long are closed.
	idleGrace = time.Second
	// Requests still running after that get this long; keep it below handover's
	// drain_timeout.
	inFlightLimit = 20 * time.Second
)

// inheritedFd returns the fd of the socket passed under name (fd 3 for ""), or -1 if this
// process was not passed any.
func inheritedFd(name string) (int, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return -1, nil // the variables are not meant for this process
	}
	count, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || count < 1 {
		return -1, nil
	}
	if name == "" {
		return 3, nil
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for i, n := range names {
		if i < count && n == name {
			return 3 + i, nil
		}
	}
	return -1, fmt.Errorf("no inherited socket is named %q (LISTEN_FDNAMES=%s)", name, os.Getenv("LISTEN_FDNAMES"))
}

func listener(name string) (net.Listener, error) {
	fd, err := inheritedFd(name)
	if err != nil {
		return nil, err
	}
	if fd < 0 {
		return net.Listen("tcp", "127.0.0.1:8080")
	}
	file := os.NewFile(uintptr(fd), name)
	// FileListener works on a copy of the fd; close the original, so that closing the
	// listener really stops this process listening.
	defer file.Close()
	return net.FileListener(file)
}

// notify sends an sd_notify message (READY=1, STOPPING=1) to $NOTIFY_SOCKET, if set.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Printf("notify: %v", err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("notify: %v", err)
	}
}

var draining atomic.Bool

// closeWhileDraining adds "Connection: close" to every answer that starts after the stop
// signal, also for requests that were already running; net/http then closes the connection
// once the answer is sent.
type closeWhileDraining struct {
	http.ResponseWriter
	started bool
}

func (w *closeWhileDraining) WriteHeader(code int) {
	if !w.started {
		w.started = true
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *closeWhileDraining) Write(b []byte) (int, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.NewResponseController (Go 1.20) reach the writer's Flush and Hijack.
func (w *closeWhileDraining) Unwrap() http.ResponseWriter {
	return w.ResponseWriter
}

func politely(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &closeWhileDraining{ResponseWriter: w}
		next.ServeHTTP(cw, r)
		if !cw.started {
			cw.WriteHeader(http.StatusOK)
		}
	})
}

func main() {
	socketName := flag.String("socket", "", "the inherited socket to serve on (default: fd 3)")
	flag.Parse()
	log.SetFlags(0)

	ln, err := listener(*socketName)
	if err != nil {
		log.Fatal(err)
	}
	body := fmt.Sprintf("hello from pid %d (worker %s, generation %s)\n",
		os.Getpid(), orDash(os.Getenv("HANDOVER_WORKER")), orDash(os.Getenv("HANDOVER_GENERATION")))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, body)
	})

	// Counts open connections, so the drain can end as soon as the last one is gone.
	var open atomic.Int64
	srv := &http.Server{
		Handler:           politely(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, state http.ConnState) {
			switch state {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		},
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	notify("READY=1")

	select {
	case err := <-served:
		log.Fatalf("serve: %v", err)
	case <-stop:
	}

	draining.Store(true)
	notify("STOPPING=1")
	// Stop listening at once. Serve returns the accept error; that is expected here.
	ln.Close()
	<-served
	// Connections close themselves after their next answer; wait for that, a while.
	deadline := time.Now().Add(idleGrace)
	for open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// What is left has been idle for the whole grace, or is busy with a request: Shutdown
	// closes the idle ones at once and waits for the busy ones.
	ctx, cancel := context.WithTimeout(context.Background(), inFlightLimit)
	defer cancel()
	srv.SetKeepAlivesEnabled(false)
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
