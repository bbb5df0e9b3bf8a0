package server

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// Healthcheck asks a running gateway's /healthz (or any address) and
// copies a 200 answer to stdout; anything else is an error. It is the
// container's HEALTHCHECK, for an image that has no shell or curl.
func Healthcheck(url string, timeout time.Duration, stdout io.Writer) error {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	fmt.Fprintf(stdout, "%s", body)
	return nil
}
