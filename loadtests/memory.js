// Memory: never-seen keys at a fixed RATE (requests/s) for DURATION, body sizes cycling
// through SIZES (bytes, via the dev origin's ?size=). Every response is stored, so the store
// fills to its bound and then evicts; run.sh samples cachegate's RSS meanwhile and prints
// it against max_size (see loadtests/rss.sh and README.md).
import http from 'k6/http';
import exec from 'k6/execution';
import { BASE_URL, DURATION, TREND_STATS, intEnv, latency, report, runSeconds } from './lib.js';

const SIZES = (__ENV.SIZES || '100,1024,16384,65536')
  .split(',')
  .map((s) => parseInt(s, 10))
  .filter((n) => Number.isFinite(n) && n >= 0);
if (SIZES.length === 0) throw new Error('SIZES must list body sizes in bytes, e.g. 1024,65536');

export const options = {
  scenarios: {
    memory: {
      executor: 'constant-arrival-rate',
      rate: intEnv('RATE', 2000),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: intEnv('VUS', 32),
      maxVUs: intEnv('MAX_VUS', 256),
      gracefulStop: '10s',
    },
  },
  thresholds: { http_req_failed: ['rate==0'] },
  summaryTrendStats: TREND_STATS,
  discardResponseBodies: true,
};

export function setup() {
  // A run id keeps keys distinct from earlier runs against a cache that is still warm.
  return { run: Date.now().toString(36), t0: Date.now() };
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const size = SIZES[n % SIZES.length];
  // An hour of freshness, so L1 (which never holds an entry past it) fills too.
  const res = http.get(`${BASE_URL}/mem/${data.run}-${n}?size=${size}&cc=max-age%3D3600`, { tags: { name: 'memory' } });
  latency.add(res.timings.duration);
}

export function teardown(data) {
  runSeconds.add((Date.now() - data.t0) / 1000);
}

export const handleSummary = report(
  `memory: ${BASE_URL} /mem/<run>-<n>?size=<${SIZES.join('|')}>`,
  () => [['body sizes', SIZES.join(', ') + ' bytes, round robin']],
);
