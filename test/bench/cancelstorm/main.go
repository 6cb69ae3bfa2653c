// Command cancelstorm measures many broker cancels at once: it creates -n tenants on a running service, waits
// for their consumers, then deletes all their queues one after the other on one channel (each delete cancels
// a consumer) while one more tenant, the bystander, publishes every 50 ms. It reports how long until every
// queue is back with a consumer, the reconciliation passes and repairs that took, the service's CPU and
// goroutines, and the bystander's publishes meanwhile.
//
// Against the local servers (deployments/local/services.sh up), in a virtual host and database of their own:
//
//	curl -u guest:guest -X PUT http://127.0.0.1:27673/api/vhosts/storm
//	psql "$DATABASE_URL" -c 'CREATE DATABASE storm'
//	go build -o /tmp/msgsvc-server ./cmd/server
//	DATABASE_URL=postgres://msgsvc:msgsvc@127.0.0.1:27432/storm?sslmode=disable \
//	  AMQP_URL=amqp://guest:guest@127.0.0.1:27672/storm RABBITMQ_MANAGEMENT_URL=http://guest:guest@127.0.0.1:27673 \
//	  AMQP_QUEUE_TYPE=classic HTTP_ADDR=127.0.0.1:18080 ADMIN_API_KEYS=storm-admin-key-0123456789 LOG_LEVEL=warn \
//	  /tmp/msgsvc-server &
//	go run ./test/bench/cancelstorm -n 1000 -pid $(pgrep -f /tmp/msgsvc-server)
//
// (the ports are those of .dev/services.env; the figures of 2026-12-06 are in modules/consumer/README.md).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	api   = flag.String("api", "http://127.0.0.1:18080", "the service's base URL")
	key   = flag.String("key", "storm-admin-key-0123456789", "an admin API key of the service")
	mgmt  = flag.String("mgmt", "http://guest:guest@127.0.0.1:27673", "RabbitMQ's management API")
	vhost = flag.String("vhost", "storm", "the service's virtual host")
	amqpU = flag.String("amqp", "amqp://guest:guest@127.0.0.1:27672/storm", "AMQP URL of the service's virtual host, for the deletes")
	n     = flag.Int("n", 1000, "tenants whose queues are deleted (one more is the bystander)")
	pid   = flag.Int("pid", 0, "the service's process id (its CPU time is read from /proc)")
)

func call(method, url string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+*key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func queues() map[string]int {
	resp, err := http.Get(*mgmt + "/api/queues/" + *vhost + "?columns=name,consumers")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var qs []struct {
		Name      string `json:"name"`
		Consumers int    `json:"consumers"`
	}
	json.NewDecoder(resp.Body).Decode(&qs)
	m := map[string]int{}
	for _, q := range qs {
		m[q.Name] = q.Consumers
	}
	return m
}

func metrics() map[string]float64 {
	resp, err := http.Get(*api + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "msgsvc_reconcile") || strings.HasPrefix(l, "msgsvc_consumer_restarts_total") || strings.HasPrefix(l, "go_goroutines") {
			i := strings.LastIndex(l, " ")
			v, _ := strconv.ParseFloat(l[i+1:], 64)
			m[l[:i]] = v
		}
	}
	return m
}

func cpu() float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", *pid))
	f := strings.Fields(string(b)[strings.LastIndex(string(b), ")")+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100
}

func main() {
	flag.Parse()
	ids := make([]string, *n+1)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	t0 := time.Now()
	for i := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			st, b := call("POST", *api+"/api/v1/tenants", map[string]any{"name": fmt.Sprintf("storm-%d-%d", time.Now().UnixNano(), i), "concurrency_config": 1})
			if st != 201 {
				fmt.Println("create:", st, string(b))
				os.Exit(1)
			}
			var t struct {
				ID string `json:"id"`
			}
			json.Unmarshal(b, &t)
			ids[i] = t.ID
		}()
	}
	wg.Wait()
	fmt.Printf("created %d tenants in %s\n", len(ids), time.Since(t0).Round(time.Millisecond))
	bystander, victims := ids[0], ids[1:]
	qn := func(id string) string { return "tenant." + id }
	for {
		q := queues()
		ok := 0
		for _, id := range ids {
			if q[qn(id)] >= 1 {
				ok++
			}
		}
		if ok == len(ids) {
			break
		}
		time.Sleep(time.Second)
	}
	fmt.Println("all consumed; settling 5 s")
	time.Sleep(5 * time.Second)
	m0, c0 := metrics(), cpu()

	// the bystander publishes every 50 ms throughout
	stop := make(chan struct{})
	var lat []time.Duration
	var bad int
	var bmu sync.Mutex
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			s := time.Now()
			st, _ := call("POST", *api+"/api/v1/messages", map[string]any{"tenant_id": bystander, "payload": map[string]int{"i": 1}})
			bmu.Lock()
			if st == 202 {
				lat = append(lat, time.Since(s))
			} else {
				bad++
			}
			bmu.Unlock()
		}
	}()
	time.Sleep(2 * time.Second)

	conn, err := amqp.Dial(*amqpU)
	if err != nil {
		panic(err)
	}
	ch, _ := conn.Channel()
	d0 := time.Now()
	for _, id := range victims {
		if _, err := ch.QueueDelete(qn(id), false, false, false); err != nil {
			panic(err)
		}
	}
	fmt.Printf("deleted %d queues in %s\n", len(victims), time.Since(d0).Round(time.Millisecond))
	var backAt time.Duration
	for {
		q := queues()
		ok := 0
		for _, id := range victims {
			if q[qn(id)] >= 1 {
				ok++
			}
		}
		if ok == len(victims) {
			backAt = time.Since(d0)
			break
		}
		if time.Since(d0) > 5*time.Minute {
			fmt.Println("not all back after 5 min:", ok)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	m1, c1 := metrics(), cpu()
	time.Sleep(15 * time.Second)
	fmt.Printf("goroutines: %.0f before the deletes, %.0f 15 s after every queue was back\n", m0["go_goroutines"], metrics()["go_goroutines"])
	fmt.Printf("every queue back with a consumer %s after the deletes began\n", backAt.Round(time.Millisecond))
	fmt.Printf("service CPU over the storm (to +2 s): %.2f s\n", c1-c0)
	for k, v := range m1 {
		if d := v - m0[k]; d != 0 {
			fmt.Printf("  %s +%.0f\n", k, d)
		}
	}
	bmu.Lock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		fmt.Printf("bystander: %d publishes 202, %d not; p50 %s, p99 %s, max %s\n", len(lat), bad, lat[len(lat)/2].Round(100*time.Microsecond),
			lat[len(lat)*99/100].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
	}
}
