// Purge under load: VUS users read KEYS hot keys (all tagged `hot` by their route) while a
// purger soft-purges the tag every PURGE_EVERY through the admin JSON API. Each purge
// should cost one origin request per purged key (its one refresh) and no client error.
// See README.md.
import { sleep } from 'k6';
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Gauge, Trend } from 'k6/metrics';
import {
  BASE_URL, DURATION, TREND_STATS, fmt, intEnv, latency, originStats, originThresholds, report,
  resetOrigin, runSeconds, value,
} from './lib.js';

const KEYS = intEnv('KEYS', 100);
const TAG = __ENV.TAG || 'hot';
const SOFT = __ENV.MODE !== 'hard';
const PURGE_EVERY = __ENV.PURGE_EVERY || '3s';
const ADMIN_URL = (__ENV.ADMIN_URL || 'http://127.0.0.1:9090').replace(/\/+$/, '');
const TOKEN = __ENV.CACHEGATE_ADMIN_TOKEN || '';
const paths = Array.from({ length: KEYS }, (_, i) => `/hot/${i}?cc=max-age%3D3600`);

const purges = new Counter('purges');
const purged = new Counter('purged_entries');
const purgeFailed = new Counter('purge_failed');
const purgeLatency = new Trend('purge_latency', true);
const originRequests = new Gauge('origin_requests');

export const options = {
  scenarios: {
    hit: {
      executor: 'constant-vus', vus: intEnv('VUS', 50), duration: DURATION, gracefulStop: '10s',
      exec: 'read',
    },
    purger: {
      executor: 'constant-arrival-rate', rate: 1, timeUnit: PURGE_EVERY, duration: DURATION,
      preAllocatedVUs: 1, maxVUs: 2, startTime: '1s', exec: 'purge',
    },
  },
  thresholds: Object.assign(
    { 'http_req_failed{scenario:hit}': ['rate==0'], purge_failed: ['count==0'] },
    originThresholds({}),
  ),
  summaryTrendStats: TREND_STATS,
  discardResponseBodies: true,
};

export function setup() {
  if (!TOKEN) throw new Error('set CACHEGATE_ADMIN_TOKEN (run.sh purge does)');
  resetOrigin();
  for (const p of paths) http.get(BASE_URL + p, { tags: { name: 'warmup' } });
  return { before: originStats(), t0: Date.now() };
}

export function read() {
  const res = http.get(BASE_URL + paths[exec.scenario.iterationInTest % KEYS], { tags: { name: 'hit' } });
  latency.add(res.timings.duration);
}

export function purge() {
  const res = http.post(`${ADMIN_URL}/purge`, JSON.stringify({ tags: [TAG], soft: SOFT }), {
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    responseType: 'text',
    tags: { name: 'purge' },
  });
  purgeLatency.add(res.timings.duration);
  let total;
  try {
    total = JSON.parse(res.body).total;
  } catch (e) {
    total = undefined;
  }
  if (res.status !== 200 || typeof total !== 'number') {
    purgeFailed.add(1);
    console.error(`purge: ${res.status} ${res.body || res.error}`);
    return;
  }
  purges.add(1);
  purged.add(total);
}

export function teardown(data) {
  runSeconds.add((Date.now() - data.t0) / 1000);
  // Let the last purge's refreshes land before counting.
  sleep(1);
  const after = originStats();
  if (data.before && after) originRequests.add(after.requests - data.before.requests);
}

export const handleSummary = report(
  `purge: ${BASE_URL} ${KEYS} keys tagged ${TAG}, ${SOFT ? 'soft' : 'hard'} purge every ${PURGE_EVERY}`,
  (data) => {
    const n = value(data, 'purges', 'count') || 0;
    const entries = value(data, 'purged_entries', 'count') || 0;
    const origin = value(data, 'origin_requests');
    const ms = (stat) => fmt(value(data, 'purge_latency', stat), 1);
    return [
      ['purges', `${n} (failed ${value(data, 'purge_failed', 'count') || 0})`],
      ['entries purged', `${entries} (${fmt(n ? entries / n : undefined, 1)} per purge)`],
      ['purge latency ms', `p50 ${ms('med')}  p95 ${ms('p(95)')}  max ${ms('max')}`],
      ['origin requests during run', fmt(origin, 0)],
      ['origin requests per purge', `${fmt(n && origin !== undefined ? origin / n : undefined, 1)} (ideal ${KEYS})`],
      ['origin requests per purged key', `${fmt(entries && origin !== undefined ? origin / entries : undefined, 2)} (target 1)`],
    ];
  },
);
