package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/acme/msgsvc/platform/broker"
)

// sample is what the node costs at one number of tenant queues.
type sample struct {
	Queues int `json:"queues"`
	// DeclareSeconds and ConsumeSeconds are how long this step's new queues took to declare and to consume.
	DeclareSeconds float64 `json:"declare_seconds"`
	ConsumeSeconds float64 `json:"consume_seconds"`
	// CreateCPUms is the node's CPU per new tenant queue while this step declared and consumed them (ms), its
	// idle work over that time included.
	CreateCPUms   float64 `json:"create_cpu_ms_per_queue,omitempty"`
	Retries       int64   `json:"retries"` // declares and consumes that failed and were tried again, so far
	LastRetry     string  `json:"last_retry,omitempty"`
	RSSBytes      float64 `json:"rss_bytes"`      // VmRSS of beam.smp
	MemUsedBytes  float64 `json:"mem_used_bytes"` // what RabbitMQ counts (management API mem_used)
	MemLimitBytes float64 `json:"mem_limit_bytes"`
	MemAlarm      bool    `json:"mem_alarm"`
	Procs         int     `json:"erlang_processes"`
	ProcLimit     int     `json:"erlang_process_limit"`
	FDs           int     `json:"file_descriptors"`
	FDLimit       int     `json:"file_descriptor_limit"`
	Connections   int     `json:"consumer_connections"`
	IdleCPU       float64 `json:"idle_cpu_percent"`  // beam.smp's CPU over the window, % of one core
	OtherCPU      float64 `json:"other_cpu_percent"` // the rest of the machine's busy CPU in the window, % of all cores
	WindowSeconds float64 `json:"window_seconds"`
}

// run is one queue type's measurement on one node.
type run struct {
	Version       string   `json:"rabbitmq_version"`
	Node          string   `json:"node"`
	Type          string   `json:"queue_type"`
	Empty         sample   `json:"empty"`
	Steps         []sample `json:"steps"`
	DeleteSeconds float64  `json:"delete_seconds"`
	Note          string   `json:"note,omitempty"`
}

// measureType measures queue type typ at every step on a node: the local one, or a fresh container of -image.
func measureType(ctx context.Context, root string, opt options, typ string) (res *run, err error) {
	var n *node
	if opt.image != "" {
		name := fmt.Sprintf("msgsvc-brokercost-%d-%s", os.Getpid(), typ)
		fmt.Printf("== %s: starting a container of %s (%s)\n", typ, opt.image, name)
		n, err = containerNode(ctx, opt.image, name)
		if n != nil && n.remove != nil && !opt.keep {
			defer n.remove()
		}
	} else {
		n, err = localNode(ctx, root)
	}
	if err != nil {
		return nil, err
	}
	res = &run{Version: n.version, Node: n.name, Type: typ}
	fmt.Printf("== %s queues on RabbitMQ %s (%s, beam.smp pid %d)\n", typ, n.version, n.name, n.beam)

	vhost := fmt.Sprintf("msgsvc-brokercost-%d-%s", os.Getpid(), typ)
	if err := n.mgmt.CreateVHost(ctx, vhost); err != nil {
		return res, fmt.Errorf("create virtual host %s: %w", vhost, err)
	}
	defer func() {
		// Deleting the virtual host removes whatever a failed teardown left.
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		var me *broker.ManagementError
		if derr := n.mgmt.DeleteVHost(dctx, vhost); derr != nil && !(errors.As(derr, &me) && me.Status == 404) {
			err = errors.Join(err, fmt.Errorf("delete virtual host %s: %w", vhost, derr))
		}
	}()
	if err := n.mgmt.SetPermissions(ctx, vhost, n.mgmt.User(), broker.FullPermissions); err != nil {
		return res, fmt.Errorf("permissions on %s: %w", vhost, err)
	}
	f, err := newFleet(ctx, opt, typ, n.vhostURL(vhost))
	if err != nil {
		return res, err
	}
	defer func() {
		t0 := time.Now()
		fmt.Printf("   deleting %d queues\n", len(f.ids))
		tctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		if terr := f.teardown(tctx); terr != nil {
			err = errors.Join(err, terr)
		}
		res.DeleteSeconds = time.Since(t0).Seconds()
		fmt.Printf("   deleted in %.1f s\n", res.DeleteSeconds)
	}()

	fmt.Printf("   empty node: settling %s, then measuring %s\n", opt.settle, opt.window)
	if res.Empty, err = measure(ctx, n, f, opt); err != nil {
		return res, err
	}
	printSample(res.Empty)
	for _, want := range opt.steps {
		s := sample{}
		before := len(f.ids)
		cpu0, cpuErr := cpuMS(n.beam)
		t0 := time.Now()
		derr := f.declare(ctx, want)
		s.DeclareSeconds = time.Since(t0).Seconds()
		t0 = time.Now()
		cerr := f.consume(ctx)
		s.ConsumeSeconds = time.Since(t0).Seconds()
		if cpu1, err := cpuMS(n.beam); cpuErr == nil && err == nil && len(f.ids) > before {
			s.CreateCPUms = (cpu1 - cpu0) / float64(len(f.ids)-before)
		}
		fmt.Printf("   %d queues: declared in %.1f s, consumed in %.1f s, node CPU %.2f ms per new queue\n", len(f.ids),
			s.DeclareSeconds, s.ConsumeSeconds, s.CreateCPUms)
		if stepErr := errors.Join(derr, cerr); stepErr != nil {
			res.Note = fmt.Sprintf("stopped while declaring %d queues (%d consuming): %v", len(f.ids), f.consumed-f.missing, stepErr)
			fmt.Println("   " + res.Note)
			if ctx.Err() != nil {
				return res, stepErr
			}
			m, merr := measure(ctx, n, f, opt)
			m.DeclareSeconds, m.ConsumeSeconds, m.Queues = s.DeclareSeconds, s.ConsumeSeconds, f.consumed-f.missing
			res.Steps = append(res.Steps, m)
			printSample(m)
			return res, errors.Join(stepErr, merr)
		}
		fmt.Printf("   settling %s, then measuring %s\n", opt.settle, opt.window)
		m, err := measure(ctx, n, f, opt)
		m.DeclareSeconds, m.ConsumeSeconds, m.CreateCPUms = s.DeclareSeconds, s.ConsumeSeconds, s.CreateCPUms
		res.Steps = append(res.Steps, m)
		printSample(m)
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// measure waits -settle, then counts beam.smp's CPU over -window and reads its RSS and the node's figures.
func measure(ctx context.Context, n *node, f *fleet, opt options) (sample, error) {
	s := sample{Queues: f.consumed - f.missing, Connections: len(f.conns), Retries: f.retries.Load()}
	if v, ok := f.lastErr.Load().(string); ok {
		s.LastRetry = v
	}
	select {
	case <-ctx.Done():
		return s, ctx.Err()
	case <-time.After(opt.settle):
	}
	c0, err := cpuMS(n.beam)
	if err != nil {
		return s, fmt.Errorf("the node's process is gone: %w", err)
	}
	b0, t0 := machineMS()
	own0, _ := cpuMS(os.Getpid())
	start := time.Now()
	select {
	case <-ctx.Done():
		return s, ctx.Err()
	case <-time.After(opt.window):
	}
	c1, err := cpuMS(n.beam)
	if err != nil {
		return s, fmt.Errorf("the node's process is gone: %w", err)
	}
	b1, t1 := machineMS()
	own1, _ := cpuMS(os.Getpid())
	elapsed := time.Since(start)
	s.WindowSeconds = elapsed.Seconds()
	s.IdleCPU = 100 * (c1 - c0) / float64(elapsed.Milliseconds())
	if t1 > t0 {
		s.OtherCPU = 100 * max(0, (b1-b0)-(c1-c0)-(own1-own0)) / (t1 - t0)
	}
	if s.RSSBytes, err = rssBytes(n.beam); err != nil {
		return s, err
	}
	ns, err := n.stats(ctx)
	if err != nil {
		return s, err
	}
	s.MemUsedBytes, s.MemLimitBytes, s.MemAlarm = ns.MemUsed, ns.MemLimit, ns.MemAlarm
	s.Procs, s.ProcLimit, s.FDs, s.FDLimit = ns.ProcUsed, ns.ProcTotal, ns.FDUsed, ns.FDTotal
	return s, nil
}

func printSample(s sample) {
	fmt.Printf("   %6d queues: RSS %s (RabbitMQ counts %s of %s%s), idle CPU %.1f %% of a core (other processes %.0f %% of the machine), %d Erlang processes of %d, %d fds of %d, %d consumer connections, %d retries\n",
		s.Queues, mb(s.RSSBytes), mb(s.MemUsedBytes), mb(s.MemLimitBytes), alarm(s.MemAlarm), s.IdleCPU, s.OtherCPU,
		s.Procs, s.ProcLimit, s.FDs, s.FDLimit, s.Connections, s.Retries)
}

func alarm(on bool) string {
	if on {
		return ", MEMORY ALARM"
	}
	return ""
}

func mb(b float64) string { return fmt.Sprintf("%.0f MB", b/(1<<20)) }
