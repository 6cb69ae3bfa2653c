package cluster

import "time"

// lease is the pure core of a replica's ownership, fed with the outcomes of its heartbeats and the time.
//
// The other replicas count this one live while its row's heartbeat_at is younger than the TTL, so they may take
// its tenants over as early as TTL after a heartbeat this replica sent. This replica therefore holds its lease
// (owns tenants) only until TTL less margin after the start of its last successful heartbeat: the margin is the
// time it needs to stop its consumers (drain) before anyone else may start them.
//
// A lease that lapsed (heartbeats failed, or the replica surrendered it because its broker connections were
// down) and is renewed again starts a hold of one TTL: during it, the live set is read with a window reaching
// back to TTL before the last renewal before the lapse, so that replicas that were live then and have not yet
// renewed after the same outage still count. After an outage of the database itself, every replica's heartbeat
// failed; without the hold, the first one back would see itself alone and take every tenant, then give most of
// them back a heartbeat later. Replicas that join count at once.
//
// Times are the caller's (a monotonic clock: time.Now); lease does no I/O and is not safe for concurrent use.
type lease struct {
	ttl    time.Duration
	margin time.Duration
	start  time.Time // when the replica started; the base of the first hold when the first heartbeat failed

	renewed     time.Time // when the last successful heartbeat was sent; zero before the first
	surrendered bool      // given up (broker down) since the last renewal

	holdUntil  time.Time // the hold lasts until then
	holdCutoff time.Time // during the hold, heartbeats after this time count
}

// newLease returns the lease of a replica started at start.
func newLease(ttl, margin time.Duration, start time.Time) *lease {
	return &lease{ttl: ttl, margin: margin, start: start}
}

// expiry returns when the lease ends without another renewal (the zero time when it was never renewed).
func (l *lease) expiry() time.Time {
	if l.renewed.IsZero() {
		return time.Time{}
	}
	return l.renewed.Add(l.ttl - l.margin)
}

// held reports whether the replica owns tenants at now.
func (l *lease) held(now time.Time) bool {
	return !l.renewed.IsZero() && !l.surrendered && now.Before(l.expiry())
}

// base is the last renewal, or the start before the first.
func (l *lease) base() time.Time {
	if l.renewed.IsZero() {
		return l.start
	}
	return l.renewed
}

// lapsed reports whether a heartbeat sent at sent renews a lease that ended: one surrendered, or not renewed
// within TTL less margin of the last renewal (of the start, before the first).
func (l *lease) lapsed(sent time.Time) bool {
	return l.surrendered || !sent.Before(l.base().Add(l.ttl-l.margin))
}

// cutoff returns the time after which a heartbeat counts as live, for a heartbeat sent at sent: TTL before sent,
// or earlier during a hold and for a heartbeat that renews a lapsed lease.
func (l *lease) cutoff(sent time.Time) time.Time {
	c := sent.Add(-l.ttl)
	if sent.Before(l.holdUntil) && l.holdCutoff.Before(c) {
		c = l.holdCutoff
	}
	if l.lapsed(sent) {
		if b := l.base().Add(-l.ttl); b.Before(c) {
			c = b
		}
	}
	return c
}

// window returns how old a heartbeat may be, at sent, to count as live: sent less cutoff(sent).
func (l *lease) window(sent time.Time) time.Duration { return sent.Sub(l.cutoff(sent)) }

// renew records a successful heartbeat sent at sent (its statement was sent at or after sent). A heartbeat that
// renews a lapsed lease starts a hold of one TTL.
func (l *lease) renew(sent time.Time) {
	if l.lapsed(sent) {
		l.holdCutoff = l.cutoff(sent)
		l.holdUntil = sent.Add(l.ttl)
	}
	l.renewed = sent
	l.surrendered = false
}

// surrender gives the lease up at once: the replica owns nothing until its next renewal.
func (l *lease) surrender() { l.surrendered = true }

// holding reports whether a hold is on at now.
func (l *lease) holding(now time.Time) bool { return now.Before(l.holdUntil) }
