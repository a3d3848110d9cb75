-- wrk's summary as one JSON line (bench.py's (d)): counts, seconds, and latency in microseconds.
-- status_errors: answers that were not 2xx/3xx; errors: connect, read, write and timeout errors.
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"n": %d, "seconds": %.6f, "errors": %d, "status_errors": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
      latency:percentile(50), latency:percentile(99), latency.max))
end
