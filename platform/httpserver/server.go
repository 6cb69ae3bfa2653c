// Package httpserver runs the HTTP API: a chi router with request ids, access logs, panic recovery into
// problem responses, a body limit and Prometheus metrics, plus the liveness and readiness probes of
// platform/health. Modules add their routes through the "routes" value group.
package httpserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/health"
	"github.com/acme/msgsvc/platform/metrics"
	"github.com/acme/msgsvc/platform/problem"
)

// Routes is implemented by every module that serves HTTP; Register mounts its handlers under the API router.
type Routes interface {
	Register(r chi.Router)
}

// Options configures a Server.
type Options struct {
	Addr              string
	MaxBodyBytes      int64 // the body limit of every endpoint...
	MaxBatchBodyBytes int64 // ...but those that decode with DecodeJSONLimit and a larger limit, up to this
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	// Authenticate, when set, runs after the body limit on every request (it decides which paths need a key).
	Authenticate func(http.Handler) http.Handler
}

// Server is the HTTP server of the service.
type Server struct {
	opts    Options
	log     *zap.Logger
	router  chi.Router
	srv     *http.Server
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
	addr    net.Addr

	seriesMu sync.RWMutex
	series   map[seriesKey]seriesPair // the request series by their labels, looked up once
}

// seriesKey are the labels of a request's series; seriesPair the series.
type seriesKey struct {
	method, route string
	status        int
}

type seriesPair struct {
	reqs    prometheus.Counter
	latency prometheus.Observer
}

// maxCachedSeries bounds the cache of request series (methods are the client's choice).
const maxCachedSeries = 4096

// seriesFor returns the series of a request with these labels.
func (s *Server) seriesFor(method, route string, status int) seriesPair {
	k := seriesKey{method: method, route: route, status: status}
	s.seriesMu.RLock()
	p, ok := s.series[k]
	s.seriesMu.RUnlock()
	if ok {
		return p
	}
	code := strconv.Itoa(status)
	p = seriesPair{reqs: s.reqs.WithLabelValues(method, route, code), latency: s.latency.WithLabelValues(method, route, code)}
	s.seriesMu.Lock()
	if len(s.series) < maxCachedSeries {
		s.series[k] = p
	}
	s.seriesMu.Unlock()
	return p
}

// New builds the router with its middleware, the probes (readiness runs checks), /metrics and every module's
// routes.
func New(opts Options, log *zap.Logger, reg *prometheus.Registry, routes []Routes, checks []health.Check) *Server {
	s := &Server{opts: opts, log: log.Named("http"), series: map[seriesKey]seriesPair{}}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Name: "http_requests_total",
		Help: "HTTP requests answered, by method, route pattern and status code.",
	}, []string{"method", "route", "status"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metrics.Namespace, Name: "http_request_duration_seconds",
		Help:    "HTTP request latency by method, route pattern and status code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"method", "route", "status"})
	reg.MustRegister(s.reqs, s.latency)

	r := chi.NewRouter()
	r.Use(newRequestIDs().middleware, s.instrument, s.recoverer, s.limitBody)
	if opts.Authenticate != nil {
		r.Use(opts.Authenticate)
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, r, problem.New(problem.KindNotFound, "not-found", "no such resource"))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		problem.WriteDetails(w, problem.Details{Type: problem.TypeBase + "method-not-allowed",
			Title: http.StatusText(405), Status: 405, Detail: r.Method + " is not allowed here", Instance: r.URL.Path,
			RequestID: middleware.GetReqID(r.Context())})
	})
	health.New(checks).Register(r)
	r.Method(http.MethodGet, "/metrics", metrics.Handler(reg))
	for _, rt := range routes {
		rt.Register(r)
	}
	s.router = r
	s.srv = &http.Server{
		Addr:              opts.Addr,
		Handler:           r,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(s.log),
	}
	return s
}

// Handler returns the root handler (useful in tests).
func (s *Server) Handler() http.Handler { return s.router }

// Addr returns the address the server listens on once started.
func (s *Server) Addr() net.Addr { return s.addr }

// Start listens and serves in the background.
func (s *Server) Start(context.Context) error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("httpserver: listen %s: %w", s.opts.Addr, err)
	}
	s.addr = ln.Addr()
	s.log.Info("listening", zap.String("addr", ln.Addr().String()))
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve failed", zap.Error(err))
		}
	}()
	return nil
}

// Stop stops accepting requests and waits for those in flight, until ctx ends.
func (s *Server) Stop(ctx context.Context) error {
	s.log.Info("shutting down")
	return s.srv.Shutdown(ctx)
}

// instrument logs each request and records its metrics under the matched route pattern.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		elapsed := time.Since(start)
		series := s.seriesFor(r.Method, route, status)
		series.reqs.Inc()
		series.latency.Observe(elapsed.Seconds())
		if route == "/healthz" || route == "/readyz" || route == "/metrics" {
			return
		}
		lvl := zap.DebugLevel
		if status >= 500 {
			lvl = zap.WarnLevel
		}
		if ce := s.log.Check(lvl, "request"); ce != nil {
			ce.Write(zap.String("request_id", middleware.GetReqID(r.Context())), zap.String("method", r.Method),
				zap.String("route", route), zap.String("path", r.URL.Path), zap.Int("status", status),
				zap.Int("bytes", ww.BytesWritten()), zap.Duration("duration", elapsed))
		}
	})
}

// recoverer turns a panic into a 500 problem response carrying the request id, and logs the stack.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", zap.Any("panic", v), zap.Stack("stack"),
					zap.String("request_id", middleware.GetReqID(r.Context())))
				problem.Write(w, r, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// limitBody caps every request body at the largest limit any endpoint has, and records the default limit,
// MaxBodyBytes, for DecodeJSON.
func (s *Server) limitBody(next http.Handler) http.Handler {
	hardLimit := max(s.opts.MaxBodyBytes, s.opts.MaxBatchBodyBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > hardLimit {
			problem.Write(w, r, tooLarge(hardLimit))
			return
		}
		body := r.Body
		if r.ContentLength < 0 { // net/http reads no more than a Content-Length, which fits the limit
			body = http.MaxBytesReader(w, body, hardLimit)
		}
		// The default limit travels with the body rather than in a context value: no copy of the request.
		r.Body = &limitedBody{ReadCloser: body, limit: s.opts.MaxBodyBytes}
		next.ServeHTTP(w, r)
	})
}

// limitedBody is a request body that carries the limit DecodeJSON applies to it.
type limitedBody struct {
	io.ReadCloser
	limit int64
}

func tooLarge(limit int64) error {
	return problem.New(problem.KindTooLarge, "body-too-large", fmt.Sprintf("the request body exceeds %d bytes", limit))
}
