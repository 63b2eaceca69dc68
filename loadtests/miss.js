// Miss path: VUS users each request never-seen keys for DURATION; measures the cost of a miss
// (lookup + origin fetch + store) against the origin's own latency. See README.md.
import http from 'k6/http';
import { Gauge } from 'k6/metrics';
import {
  BASE_URL, DURATION, TREND_STATS, fmt, intEnv, latency, originStats, report, resetOrigin,
  runSeconds, value,
} from './lib.js';

const originRequests = new Gauge('origin_requests');

export const options = {
  scenarios: {
    miss: { executor: 'constant-vus', vus: intEnv('VUS', 50), duration: DURATION, gracefulStop: '10s' },
  },
  thresholds: { http_req_failed: ['rate==0'] },
  summaryTrendStats: TREND_STATS,
  discardResponseBodies: true,
};

export function setup() {
  resetOrigin();
  // A run id keeps keys distinct from earlier runs against a cache that is still warm.
  return { run: Date.now().toString(36), before: originStats(), t0: Date.now() };
}

export default function (data) {
  const res = http.get(`${BASE_URL}/miss/${data.run}-${__VU}-${__ITER}`, { tags: { name: 'miss' } });
  latency.add(res.timings.duration);
}

export function teardown(data) {
  runSeconds.add((Date.now() - data.t0) / 1000);
  const after = originStats();
  if (data.before && after) originRequests.add(after.requests - data.before.requests);
}

export const handleSummary = report(`miss: ${BASE_URL} /miss/<run>-<vu>-<iter>`, (data) => {
  const origin = value(data, 'origin_requests');
  const clients = value(data, 'client_latency', 'count') || 0;
  return [
    ['origin requests during run', `${fmt(origin, 0)} (expect = client requests)`],
    ['origin requests / client', origin === undefined || !clients ? 'n/a' : fmt(origin / clients, 3)],
  ];
});
