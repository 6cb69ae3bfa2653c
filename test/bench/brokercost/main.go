// Command brokercost measures what idle tenant queues cost a RabbitMQ node: its resident memory (VmRSS of the
// node's beam.smp) and idle CPU, at growing numbers of tenant queues, for quorum and classic queues.
//
// Each tenant queue is declared as the service declares it (modules/consumer: Runtime.queues and the shared
// dead-letter queue's binding) and gets one consumer as the service's consumer pool gives it: its own channel
// with basic.qos of workers × CONSUMER_PREFETCH_PER_WORKER, on connections shared by up to 90 % of the
// negotiated channel_max (platform/broker: PoolChannelsPerConn). At each step the node settles, then its RSS
// is read and its CPU counted over a window with nothing published. Everything is deleted at the end.
//
//	go run ./test/bench/brokercost                                  # the local node (.dev/services.env)
//	go run ./test/bench/brokercost -image msgsvc-local/rabbitmq:4.0 # a fresh container of the image per type
//
// The local node serves one queue type per run best (-types quorum, restart, -types classic): memory a deleted
// queue held is not always handed back to the operating system, which the next type's figures would include.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/acme/msgsvc/test/bench/devenv"
)

type options struct {
	types         []string
	steps         []int
	image         string
	settle        time.Duration
	window        time.Duration
	declarers     int
	declareRate   float64
	consumers     int
	workers       int
	prefetch      int
	deliveryLimit int
	channelsPer   int
	exchange      string
	out           string
	keep          bool
	bindPublish   bool
}

func parseFlags() options {
	var o options
	types := flag.String("types", "quorum,classic", "queue types to measure, comma separated: quorum, classic, classic-v2 (classic with x-queue-version 2, for RabbitMQ 3.10)")
	steps := flag.String("steps", "1000,5000,10000", "tenant queue counts to measure at, ascending, comma separated")
	flag.StringVar(&o.image, "image", "", "run a fresh container of this RabbitMQ image per queue type (e.g. msgsvc-local/rabbitmq:4.0) instead of using the local node of .dev/services.env")
	flag.DurationVar(&o.settle, "settle", 30*time.Second, "wait this long after the queues and consumers of a step are up before measuring")
	flag.DurationVar(&o.window, "window", 30*time.Second, "idle CPU is counted over this window")
	flag.IntVar(&o.declarers, "declarers", 8, "queues declared at once (the bench's tenant creators: scenario 5 uses 8 clients)")
	flag.Float64Var(&o.declareRate, "declare-rate", 0, "tenants declared per second at most (0: as fast as -declarers go); the service declares at its tenant creation rate")
	flag.IntVar(&o.consumers, "consumer-starts", 16, "consumers started at once (the service's start parallelism is 16)")
	flag.IntVar(&o.workers, "workers", 3, "workers per tenant (TENANT_DEFAULT_CONCURRENCY); the prefetch is workers × -prefetch-per-worker")
	flag.IntVar(&o.prefetch, "prefetch-per-worker", 32, "CONSUMER_PREFETCH_PER_WORKER")
	flag.IntVar(&o.deliveryLimit, "delivery-limit", 20, "AMQP_DELIVERY_LIMIT (a quorum queue's x-delivery-limit is max(1000, 10 × it))")
	flag.IntVar(&o.channelsPer, "channels-per-connection", 0, "AMQP_CHANNELS_PER_CONNECTION (0: 90 % of the negotiated channel_max, as the service)")
	flag.StringVar(&o.exchange, "exchange", "msgsvc.messages", "AMQP_EXCHANGE")
	flag.StringVar(&o.out, "out", "test/output/brokercost.json", "JSON report path (relative to the module root)")
	flag.BoolVar(&o.bindPublish, "publish-binding", true, "bind each tenant queue to -exchange with the tenant id, as the service does (false leaves the binding out, to measure what it costs)")
	flag.BoolVar(&o.keep, "keep", false, "keep the container (-image) after the run, for inspection")
	flag.Parse()
	for _, t := range strings.Split(*types, ",") {
		t = strings.TrimSpace(t)
		if t != "quorum" && t != "classic" && t != "classic-v2" {
			fail(fmt.Errorf("-types: %q is not quorum, classic or classic-v2", t))
		}
		o.types = append(o.types, t)
	}
	last := 0
	for _, s := range strings.Split(*steps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= last {
			fail(fmt.Errorf("-steps: want ascending positive counts, got %q", *steps))
		}
		o.steps, last = append(o.steps, n), n
	}
	if o.declarers < 1 || o.consumers < 1 || o.workers < 1 || o.prefetch < 1 {
		fail(errors.New("-declarers, -consumer-starts, -workers and -prefetch-per-worker must be at least 1"))
	}
	return o
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "brokercost:", err)
	os.Exit(2)
}

func main() {
	opt := parseFlags()
	root, err := devenv.ModuleRoot()
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep := &report{Date: time.Now().UTC(), Options: strings.Join(os.Args[1:], " "), Commit: devenv.GitCommit(root)}
	failed := false
	for _, typ := range opt.types {
		if ctx.Err() != nil {
			break
		}
		res, err := measureType(ctx, root, opt, typ)
		if res != nil {
			rep.Runs = append(rep.Runs, *res)
			rep.Version = res.Version
		}
		if err != nil {
			failed = true
			fmt.Fprintf(os.Stderr, "brokercost: %s: %v\n", typ, err)
		}
	}
	fmt.Println()
	fmt.Print(rep.markdown())
	out := opt.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	if err := writeJSON(out, rep); err != nil {
		fmt.Fprintln(os.Stderr, "brokercost: write report:", err)
		failed = true
	} else {
		fmt.Printf("report: %s\n", out)
	}
	if failed || ctx.Err() != nil {
		os.Exit(1)
	}
}

func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}
