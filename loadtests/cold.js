// Cold key: VUS users ask for the same never-seen key at the same instant. The origin should
// be asked once, and the slowest waiter should wait about one origin delay. See README.md.
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Gauge, Trend } from 'k6/metrics';
import {
  BASE_URL, TREND_STATS, fmt, intEnv, latency, originStats, originThresholds, pathDelta,
  report, resetOrigin, runSeconds, seconds, value,
} from './lib.js';

const DELAY = __ENV.DELAY || '200ms';
const QUERY = `delay=${DELAY}&cc=max-age%3D60`;
// Time between the end of setup() and the synchronized request: long enough for every VU to
// open its connection with the warm-up request first.
const START_IN_MS = intEnv('START_IN_MS', 3000);

const originRequests = new Gauge('cold_origin_requests');
const lateStarters = new Counter('late_starters');
const coldLatency = new Trend('cold_latency', true);

export const options = {
  scenarios: {
    cold: { executor: 'per-vu-iterations', vus: intEnv('VUS', 200), iterations: 1, maxDuration: '2m' },
  },
  thresholds: Object.assign(
    { http_req_failed: ['rate==0'] },
    originThresholds({ cold_origin_requests: ['value==1'] }),
  ),
  summaryTrendStats: TREND_STATS,
  discardResponseBodies: true,
};

export function setup() {
  resetOrigin();
  const path = `/cold/${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  return { path, before: originStats(), startAt: Date.now() + START_IN_MS, t0: Date.now() };
}

export default function (data) {
  // Warm-up on a cached key, so the measured request reuses an open connection instead of
  // racing 1000 TCP handshakes.
  http.get(`${BASE_URL}/warm?cc=max-age%3D300`, { tags: { name: 'warmup' } });
  const wait = data.startAt - Date.now();
  if (wait > 0) sleep(wait / 1000);
  else lateStarters.add(1);
  const res = http.get(`${BASE_URL}${data.path}?${QUERY}`, { tags: { name: 'cold' } });
  latency.add(res.timings.duration);
  coldLatency.add(res.timings.duration);
}

export function teardown(data) {
  runSeconds.add((Date.now() - data.t0) / 1000);
  const after = originStats();
  if (data.before && after) originRequests.add(pathDelta(data.before, after, data.path));
}

const delayMs = seconds(DELAY) * 1000;
export const handleSummary = report(`cold: ${BASE_URL} /cold/<unique>?${QUERY}`, (data) => [
  ['origin requests (cold key)', `${fmt(value(data, 'cold_origin_requests'), 0)} (expect 1)`],
  ['slowest waiter ms', `${fmt(value(data, 'cold_latency', 'max'), 1)} (origin delay ${fmt(delayMs, 0)})`],
  ['slowest / origin delay', delayMs > 0 ? fmt(value(data, 'cold_latency', 'max') / delayMs, 2) : 'n/a (DELAY=0)'],
  ['fastest waiter ms', fmt(value(data, 'cold_latency', 'min'), 1)],
  ['late starters', `${value(data, 'late_starters', 'count') || 0} (VUs that missed the barrier; raise START_IN_MS)`],
]);
