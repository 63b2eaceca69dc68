// Hit path: VUS users read a few warm keys for DURATION; measures cache-hit throughput and
// latency. The origin should see (almost) nothing during the run. See README.md.
import http from 'k6/http';
import exec from 'k6/execution';
import { Gauge } from 'k6/metrics';
import {
  BASE_URL, DURATION, TREND_STATS, fmt, intEnv, latency, originStats, report, resetOrigin,
  runSeconds, value,
} from './lib.js';

const KEYS = intEnv('KEYS', 10);
const paths = Array.from({ length: KEYS }, (_, i) => `/hit/${i}?cc=max-age%3D3600`);
const originRequests = new Gauge('origin_requests');

export const options = {
  scenarios: {
    hit: { executor: 'constant-vus', vus: intEnv('VUS', 50), duration: DURATION, gracefulStop: '10s' },
  },
  thresholds: { http_req_failed: ['rate==0'] },
  summaryTrendStats: TREND_STATS,
  discardResponseBodies: true,
};

export function setup() {
  resetOrigin();
  for (const p of paths) http.get(BASE_URL + p, { tags: { name: 'warmup' } });
  return { before: originStats(), t0: Date.now() };
}

export default function () {
  const res = http.get(BASE_URL + paths[exec.scenario.iterationInTest % KEYS], { tags: { name: 'hit' } });
  latency.add(res.timings.duration);
}

export function teardown(data) {
  runSeconds.add((Date.now() - data.t0) / 1000);
  const after = originStats();
  if (data.before && after) originRequests.add(after.requests - data.before.requests);
}

export const handleSummary = report(`hit: ${BASE_URL} ${KEYS} warm keys /hit/<i>`, (data) => {
  const origin = value(data, 'origin_requests');
  const clients = value(data, 'client_latency', 'count') || 0;
  return [
    ['origin requests during run', `${fmt(origin, 0)} (expect ~0)`],
    ['hit ratio', origin === undefined || !clients ? 'n/a' : `${fmt((1 - origin / clients) * 100, 3)}%`],
  ];
});
