package consumer

// SetBeforeConsume makes every consume run f between its qos and its consume (nil: nothing); closing tells whether
// a stop closed the generation's channel. Set it before the application starts and reset it after it stopped.
func SetBeforeConsume(f func(closing func() bool)) { beforeConsume = f }

// SetReuseListingFrom sets how many owned tenants make a pass take the last listing again, and returns the
// setting before.
func SetReuseListingFrom(n int) int {
	before := reuseListingFrom
	reuseListingFrom = n
	return before
}
