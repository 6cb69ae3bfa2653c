package httpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"go.uber.org/zap"
)

// Profiler serves Go's net/http/pprof on its own address, apart from the API, for operators who profile a
// replica (PPROF_ADDR; bind it to localhost or an internal interface: it is not authenticated).
type Profiler struct {
	srv *http.Server
	log *zap.Logger
}

// NewProfiler returns a profiler listening on addr.
func NewProfiler(addr string, log *zap.Logger) *Profiler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &Profiler{srv: &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}, log: log.Named("pprof")}
}

// Start listens and serves in the background.
func (p *Profiler) Start(context.Context) error {
	ln, err := net.Listen("tcp", p.srv.Addr)
	if err != nil {
		return fmt.Errorf("pprof: listen %s: %w", p.srv.Addr, err)
	}
	p.log.Warn("profiling endpoints served (unauthenticated)", zap.String("addr", ln.Addr().String()))
	go func() {
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("pprof server failed", zap.Error(err))
		}
	}()
	return nil
}

// Stop closes the profiler.
func (p *Profiler) Stop(ctx context.Context) error { return p.srv.Shutdown(ctx) }
