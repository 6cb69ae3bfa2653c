package consumer

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/platform/cluster"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
)

// Module provides the consumer runtime, subscribes it to the tenant events and runs it in the lifecycle: it
// starts after the broker and the database, and stops (draining every consumer) before them.
var Module = fx.Module("consumer",
	fx.Provide(
		func(reg prometheus.Registerer, c config.Config) *Metrics { return NewMetrics(reg, c.MetricsPerTenant) },
		OptionsFrom,
		// The cluster's membership places the tenants on the replicas.
		func(m *cluster.Membership) Placement { return m },
		NewDeadLetters,
		NewRuntime,
		func(r *Runtime) events.ConsumerStates { return r },
		httpserver.AsRoutes(NewHandlers),
	),
	fx.Invoke(Subscribe),
	// After the runtime's hook: the shared dead-letter queue is consumed once the exchanges exist, and stops first.
	fx.Invoke(func(lc fx.Lifecycle, dl *DeadLetters) { lc.Append(fx.Hook{OnStart: dl.Start, OnStop: dl.Stop}) }),
)

// OptionsFrom takes the runtime's options from the configuration.
func OptionsFrom(c config.Config) Options {
	return Options{ReplicaID: c.ReplicaID, Exchange: c.AMQPExchange, QueueType: c.AMQPQueueType,
		DeliveryLimit: c.AMQPDeliveryLimit, PrefetchPerWorker: c.PrefetchPerWorker, BatchSize: c.ConsumerBatchSize, Linger: c.ConsumerLinger, AckDelay: c.ConsumerAckDelay, RetryInitial: c.StoreRetryInitial,
		RetryBudget: c.StoreRetryBudget, DrainTimeout: c.ConsumerDrainTimeout, HandoverWait: HandoverWait(c.ReplicaHeartbeatInterval),
		HandoverLookback: HandoverWait(c.ReplicaHeartbeatInterval), ReconcileInterval: c.ReconcileInterval, OrphanGrace: c.ReconcileOrphanGrace,
		ManagementURL: c.RabbitMQManagementURL, AMQPURL: c.AMQPURL}
}

// HandoverWait is how long a replica giving a tenant up waits for the new owner's announcement before it drains
// anyway: two heartbeat intervals (the new owner sees the change up to one interval later) and a margin for its
// reconciliation to start the consumers of hundreds of tenants, paced.
func HandoverWait(heartbeat time.Duration) time.Duration { return 2*heartbeat + handoverMargin }

const handoverMargin = 5 * time.Second

// Subscribe registers the runtime on the tenant events and in the lifecycle.
func Subscribe(lc fx.Lifecycle, bus *events.Bus, r *Runtime) {
	events.Subscribe(bus, "consumer.topology", func(ctx context.Context, e events.TenantProvisioning) error {
		return r.DeclareTopology(ctx, e.Tenant.ID)
	})
	events.Subscribe(bus, "consumer.topology", func(ctx context.Context, e events.TenantCreateFailed) error {
		return r.DeleteTopology(ctx, e.TenantID)
	})
	// Every replica hears of every tenant (the relay); the one that owns it runs its consumer.
	events.Subscribe(bus, "consumer.start", func(ctx context.Context, e events.TenantCreated) error {
		r.creations.Mark()
		if !r.Owns(e.Tenant.ID) {
			return nil
		}
		return r.Ensure(ctx, e.Tenant.ID, e.Tenant.Concurrency, "tenant created")
	})
	events.Subscribe(bus, "consumer.resize", func(ctx context.Context, e events.TenantConcurrencyChanged) error {
		if !r.Owns(e.TenantID) {
			return nil
		}
		return r.Ensure(ctx, e.TenantID, e.Concurrency, "concurrency changed")
	})
	// Another replica's consumers started: a handover of these tenants away from this replica may finish.
	events.Subscribe(bus, "consumer.handover", func(ctx context.Context, e events.TenantsConsumed) error {
		if events.IsRemote(ctx) {
			r.Consumed(e)
		}
		return nil
	})
	// Another replica began to give tenants up: this one may own one it never heard of.
	events.Subscribe(bus, "consumer.handover", func(ctx context.Context, e events.TenantsHandedOver) error {
		if events.IsRemote(ctx) {
			r.HandedOver(e)
		}
		return nil
	})
	events.Subscribe(bus, "consumer.stop", func(ctx context.Context, e events.TenantDeleting) error {
		r.StopDeleted(ctx, e.TenantID, "tenant deleted")
		return nil
	})
	// TenantDeleted is local to the replica that deleted the tenant and follows TenantDeleting, which reached the
	// other replicas before it: their consumers are draining. The queues go once no consumer is left on them,
	// so that no replica has its consumer cancelled mid-batch by a missing queue (the messaging module waited
	// the same way before it dropped the partition, so this wait is short).
	events.Subscribe(bus, "consumer.topology", func(ctx context.Context, e events.TenantDeleted) error {
		r.AwaitNoConsumers(ctx, e.TenantID)
		return r.DeleteTopology(ctx, e.TenantID)
	})
	lc.Append(fx.Hook{OnStart: r.Start, OnStop: r.Shutdown})
}
