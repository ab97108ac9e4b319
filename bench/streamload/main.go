// streamload is the paced SSE upstream and the streaming client of bench/streaming.py, in one
// small compiled program so that neither takes the CPU that the gateway under test needs: on a
// 2-core machine a Python upstream and a Python client stall 1000 streams on their own.
//
//	streamload serve -addr 127.0.0.1:18085
//	streamload load -url http://127.0.0.1:18086/v1/chat/completions -model paced -key KEY \
//	    -streams 1000 -pace 20ms -chunks 20
//
// serve answers POST /v1/chat/completions with an OpenAI chat.completion.chunk stream. The model
// name "paced:MS:COUNT" (as meshgate's fake upstream) gives COUNT content chunks MS milliseconds
// apart, each on its own deadline from the start so that pacing never drifts; a usage chunk
// follows when the request asks for stream_options.include_usage, then "data: [DONE]".
//
// load opens every stream at once (or spread over -ramp), timestamps each content chunk as it
// arrives and prints one JSON summary: chunks delivered and lost, stalls (a gap over twice the
// pacing between two chunks of one stream), time to first chunk, and how many streams were open
// at the same time. Only the standard library: it builds with Debian's golang-go, offline.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: streamload serve|load [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "load":
		load(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q: serve or load\n", os.Args[1])
		os.Exit(2)
	}
}

// ---- the paced upstream --------------------------------------------------------------------

type chatRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// pacing reads "paced:MS:COUNT"; any other model streams 20 chunks 20 ms apart.
func pacing(model string) (time.Duration, int) {
	pace, count := 20*time.Millisecond, 20
	parts := strings.Split(model, ":")
	if len(parts) == 3 && parts[0] == "paced" {
		if ms, err := strconv.ParseFloat(parts[1], 64); err == nil {
			pace = time.Duration(ms * float64(time.Millisecond))
		}
		if n, err := strconv.Atoi(parts[2]); err == nil {
			count = n
		}
	}
	return pace, count
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := flags.String("addr", "127.0.0.1:18085", "listen address")
	_ = flags.Parse(args)
	http.HandleFunc("/v1/chat/completions", streamCompletion)
	http.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		_, _ = io.WriteString(w, `{"object":"list","data":[{"id":"paced","object":"model","created":0,"owned_by":"bench"}]}`)
	})
	server := &http.Server{Addr: *addr, ReadHeaderTimeout: 10 * time.Second}
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func streamCompletion(w http.ResponseWriter, r *http.Request) {
	var request chatRequest
	if err := json.NewDecoder(r.Body).Decode(&request); err != nil || r.Method != http.MethodPost {
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":{"message":"send a JSON chat completion request","type":"invalid_request_error","param":null,"code":null}}`)
		return
	}
	pace, count := pacing(request.Model)
	usage := request.StreamOptions != nil && request.StreamOptions.IncludeUsage
	flusher, _ := w.(http.Flusher)
	head := w.Header()
	head.Set("content-type", "text/event-stream")
	head.Set("cache-control", "no-cache")
	w.WriteHeader(http.StatusOK)
	created := time.Now().Unix()
	prefix := fmt.Sprintf(`data: {"id":"chatcmpl-paced","object":"chat.completion.chunk","created":%d,"model":%q,"choices":[`, created, request.Model)
	suffix := "]}\n\n"
	if usage {
		suffix = `],"usage":null}` + "\n\n"
	}
	send := func(choices string) bool {
		if _, err := io.WriteString(w, prefix+choices+suffix); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if !send(`{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}`) {
		return
	}
	start := time.Now()
	for i := 0; i < count; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * pace)))
		if !send(fmt.Sprintf(`{"index":0,"delta":{"content":"tok%d "},"logprobs":null,"finish_reason":null}`, i)) {
			return
		}
	}
	if !send(`{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}`) {
		return
	}
	if usage {
		_, _ = fmt.Fprintf(w, `data: {"id":"chatcmpl-paced","object":"chat.completion.chunk","created":%d,"model":%q,"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":%d,"total_tokens":%d}}`+"\n\n", created, request.Model, count, count+9)
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
}

// ---- the streaming client ------------------------------------------------------------------

type streamResult struct {
	opened, closed time.Time
	status         int
	chunks         int
	ttft           time.Duration
	gaps           []time.Duration
	done           bool
	err            string
}

var contentMarker = []byte(`"content":"tok`)

func oneStream(client *http.Client, url, key string, body []byte) (result streamResult) {
	result.opened = time.Now()
	defer func() { result.closed = time.Now() }()
	request, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	request.Header.Set("content-type", "application/json")
	request.Header.Set("authorization", "Bearer "+key)
	response, err := client.Do(request)
	if err != nil {
		result.err = err.Error()
		return result
	}
	defer response.Body.Close()
	result.status = response.StatusCode
	if response.StatusCode != http.StatusOK {
		text, _ := io.ReadAll(io.LimitReader(response.Body, 300))
		result.err = fmt.Sprintf("HTTP %d: %s", response.StatusCode, text)
		return result
	}
	reader := bufio.NewReaderSize(response.Body, 64*1024)
	var last time.Time
	for {
		line, err := reader.ReadSlice('\n')
		if len(line) > 6 && bytes.HasPrefix(line, []byte("data: ")) {
			now := time.Now()
			switch {
			case bytes.Contains(line, contentMarker):
				if result.chunks == 0 {
					result.ttft = now.Sub(result.opened)
				} else {
					result.gaps = append(result.gaps, now.Sub(last))
				}
				last = now
				result.chunks++
			case bytes.HasPrefix(line, []byte("data: [DONE]")):
				result.done = true
			case bytes.Contains(line, []byte(`"error"`)):
				result.err = strings.TrimSpace(string(line))
			}
		}
		if err != nil {
			if err != io.EOF && result.err == "" {
				result.err = err.Error()
			}
			return result
		}
	}
}

type summary struct {
	Streams        int      `json:"streams"`
	Completed      int      `json:"completed"`
	Chunks         int      `json:"chunks"`
	Expected       int      `json:"expected"`
	Lost           int      `json:"lost"`
	StalledStreams int      `json:"stalled_streams"`
	Stalls         int      `json:"stalls"`
	MaxGapMs       float64  `json:"max_gap_ms"`
	GapP99Ms       float64  `json:"gap_p99_ms"`
	TTFTP50Ms      float64  `json:"ttft_p50_ms"`
	TTFTP99Ms      float64  `json:"ttft_p99_ms"`
	MaxConcurrent  int      `json:"max_concurrent"`
	SecondsAllOpen float64  `json:"seconds_all_open"`
	WallSeconds    float64  `json:"wall_seconds"`
	Errors         int      `json:"errors"`
	FirstErrors    []string `json:"first_errors"`
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	index := int(math.Ceil(q*float64(len(sorted)))) - 1
	if index < 0 {
		index = 0
	}
	return sorted[index]
}

// concurrency is the largest number of streams open at one instant, and for how long all of
// them were: proof that the streams really overlapped rather than ran one after another.
func concurrency(results []streamResult) (int, time.Duration) {
	type edge struct {
		at    time.Time
		delta int
	}
	edges := make([]edge, 0, 2*len(results))
	for _, r := range results {
		edges = append(edges, edge{r.opened, 1}, edge{r.closed, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].delta < edges[j].delta
		}
		return edges[i].at.Before(edges[j].at)
	})
	open, peak := 0, 0
	var allOpen time.Duration
	for i, e := range edges {
		open += e.delta
		if open > peak {
			peak = open
		}
		if open == len(results) && i+1 < len(edges) {
			allOpen += edges[i+1].at.Sub(e.at)
		}
	}
	return peak, allOpen
}

func summarize(results []streamResult, chunks int, stall time.Duration, wall time.Duration) summary {
	s := summary{Streams: len(results), Expected: len(results) * chunks, FirstErrors: []string{}}
	var ttfts, gaps []time.Duration
	for _, r := range results {
		s.Chunks += r.chunks
		if r.done && r.err == "" {
			s.Completed++
		}
		if r.err != "" {
			s.Errors++
			if len(s.FirstErrors) < 5 {
				s.FirstErrors = append(s.FirstErrors, r.err)
			}
		}
		if r.chunks > 0 {
			ttfts = append(ttfts, r.ttft)
		}
		stalled := false
		for _, g := range r.gaps {
			gaps = append(gaps, g)
			if g > stall {
				s.Stalls++
				stalled = true
			}
		}
		if stalled {
			s.StalledStreams++
		}
	}
	s.Lost = s.Expected - s.Chunks
	sort.Slice(ttfts, func(i, j int) bool { return ttfts[i] < ttfts[j] })
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	if len(gaps) > 0 {
		s.MaxGapMs = ms(gaps[len(gaps)-1])
	}
	s.GapP99Ms = ms(percentile(gaps, 0.99))
	s.TTFTP50Ms = ms(percentile(ttfts, 0.50))
	s.TTFTP99Ms = ms(percentile(ttfts, 0.99))
	peak, allOpen := concurrency(results)
	s.MaxConcurrent = peak
	s.SecondsAllOpen = math.Round(allOpen.Seconds()*100) / 100
	s.WallSeconds = math.Round(wall.Seconds()*100) / 100
	return s
}

func load(args []string) {
	flags := flag.NewFlagSet("load", flag.ExitOnError)
	url := flags.String("url", "http://127.0.0.1:18086/v1/chat/completions", "chat completions URL")
	key := flags.String("key", "unused", "bearer key")
	model := flags.String("model", "paced:20:20", "model name to ask for")
	streams := flags.Int("streams", 100, "concurrent streams")
	pace := flags.Duration("pace", 20*time.Millisecond, "the upstream's pacing; a stall is a gap over twice this")
	chunks := flags.Int("chunks", 20, "content chunks each stream should deliver")
	ramp := flags.Duration("ramp", 0, "spread the stream starts evenly over this long (0: all at once)")
	timeout := flags.Duration("timeout", 5*time.Minute, "longest a stream may take")
	_ = flags.Parse(args)

	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		MaxIdleConns:        *streams,
		MaxIdleConnsPerHost: *streams,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport, Timeout: *timeout}
	body, _ := json.Marshal(map[string]any{
		"model":    *model,
		"messages": []map[string]string{{"role": "user", "content": "Count for me."}},
		"stream":   true,
	})
	results := make([]streamResult, *streams)
	var wg sync.WaitGroup
	begin := time.Now()
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if *ramp > 0 {
				time.Sleep(time.Until(begin.Add(*ramp * time.Duration(i) / time.Duration(*streams))))
			}
			results[i] = oneStream(client, *url, *key, body)
		}(i)
	}
	wg.Wait()
	out, _ := json.Marshal(summarize(results, *chunks, 2**pace, time.Since(begin)))
	fmt.Println(string(out))
}
