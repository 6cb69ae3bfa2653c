package events

import (
	"time"

	"github.com/google/uuid"
)

// TenantDemand is one replica's report of the publish demand it saw per rate-limited tenant in its last
// exchange period: messages offered per second, accepted and refused alike. Each replica publishes one every
// RATE_LIMIT_EXCHANGE_INTERVAL, for all its active tenants at once; the cluster relay carries it to the other
// replicas, which divide each tenant's limit by demand.
type TenantDemand struct {
	// Replica is the replica whose demand this is.
	Replica string `json:"replica"`
	// Period is how often Replica reports; a report is current for about two periods.
	Period time.Duration `json:"period"`
	// Demand is messages offered per second, by tenant; tenants without demand are left out.
	Demand map[uuid.UUID]float64 `json:"demand"`
}
