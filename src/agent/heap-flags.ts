/**
 * V8 flags the agent runs with (packaging/systemd/spiffe-edge-agent.service passes them as
 * NODE_OPTIONS; bench/workload-latency.ts gives its agent process the same). They must be on the
 * command line: V8 sizes its heap when the isolate starts, so setting them from code is a no-op.
 *
 * --max-semi-space-size=2 (MiB): V8 grows the young generation to 2 x 16 MiB during any burst of
 * allocation (a sync issuing 1,000 SVIDs, 1,000 streams opening) and keeps it committed until its
 * memory reducer decides the process is idle, which on the agent can take many seconds or never
 * come while syncs keep allocating. Measured with bench/workload-latency.ts (2026-12-02): agent RSS
 * 132.6 -> 106.5 MiB with 1,002 cached SVIDs, idle 111 -> 88 MiB; the Workload API's server CPU per
 * call and latency stayed within the run-to-run noise (docs/benchmarks.md, "Agent RSS"). The agent
 * keeps little short-lived garbage per call, so the smaller nursery costs more scavenges, not more
 * promotion.
 */
export const AGENT_V8_FLAGS: readonly string[] = ['--max-semi-space-size=2']
