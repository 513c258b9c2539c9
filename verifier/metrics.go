package verifier

import (
	"time"
)

// observe records one request's outcome; Prometheus export comes with the
// metrics listener.
func observe(subject string, err error, took time.Duration) {
	_, _, _ = subject, err, took
}
