package consumer

// SetBeforeConsume makes every consume run f between its qos and its consume (nil: nothing); closing tells whether
// a stop closed the generation's channel. Set it before the application starts and reset it after it stopped.
func SetBeforeConsume(f func(closing func() bool)) { beforeConsume = f }
