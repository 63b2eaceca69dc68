// Shared helpers for the cachegate k6 scenarios: environment, origin stats (from the dev
// origin's /__stats), the hot-key scenario used by stampede.js and fleet.js, and a compact
// end-of-test report.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Gauge, Trend } from 'k6/metrics';

const trimSlash = (s) => s.trim().replace(/\/+$/, '');

export const BASE_URL = trimSlash(__ENV.BASE_URL || 'http://127.0.0.1:8080');
export const BASE_URLS = (__ENV.BASE_URLS || BASE_URL).split(',').map(trimSlash).filter(Boolean);
// An empty ORIGIN_STATS_URL disables everything that needs the origin's counters.
export const ORIGIN_STATS_URL =
  __ENV.ORIGIN_STATS_URL === undefined ? 'http://127.0.0.1:3000/__stats' : __ENV.ORIGIN_STATS_URL;
export const DURATION = __ENV.DURATION || '25s';
// setup() zeroes the origin's counters so max_in_flight describes this run only.
const ORIGIN_RESET = __ENV.ORIGIN_RESET !== '0';

export function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const n = parseInt(raw, 10);
  if (!Number.isFinite(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${raw}`);
  return n;
}

// Percentiles the report prints; 'count' gives the number of client requests.
export const TREND_STATS = ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max', 'count'];

// Client latency of the load requests only: http_req_duration would also include the
// origin-stats and warm-up requests made in setup() and teardown().
export const latency = new Trend('client_latency', true);
// Answers served from a copy past its max-age (each proxy's own marker: cachegate
// Cache-Status detail=stale-while-revalidate, nginx X-Cache-Status STALE/UPDATING,
// Varnish X-Cache STALE as loadtests/conf/varnish.vcl.in sets it in grace).
export const staleServed = new Counter('stale_served');

export function isStale(res) {
  const cs = res.headers['Cache-Status'] || '';
  const ng = res.headers['X-Cache-Status'] || '';
  const vn = res.headers['X-Cache'] || '';
  return cs.includes('stale-while-revalidate') || ng === 'STALE' || ng === 'UPDATING' || vn === 'STALE';
}
export const statsErrors = new Counter('origin_stats_errors');
export const runSeconds = new Gauge('run_seconds');

// Thresholds that only make sense when the origin's counters can be read: a threshold on a
// metric that never got a sample fails in k6, so they are left out when stats are disabled.
export function originThresholds(thresholds) {
  return ORIGIN_STATS_URL ? Object.assign({ origin_stats_errors: ['count==0'] }, thresholds) : {};
}

export function originStats() {
  if (!ORIGIN_STATS_URL) return null;
  const res = http.get(ORIGIN_STATS_URL, { responseType: 'text', tags: { name: 'origin_stats' } });
  if (res.status !== 200) {
    statsErrors.add(1);
    console.error(`origin stats: GET ${ORIGIN_STATS_URL} answered ${res.status} ${res.error || ''}`);
    return null;
  }
  try {
    return JSON.parse(res.body);
  } catch (e) {
    statsErrors.add(1);
    console.error(`origin stats: not JSON: ${e}`);
    return null;
  }
}

export function resetOrigin() {
  if (!ORIGIN_STATS_URL || !ORIGIN_RESET) return;
  const url = ORIGIN_STATS_URL.replace(/\/__stats$/, '/__reset');
  const res = http.post(url, null, { responseType: 'none', tags: { name: 'origin_reset' } });
  if (res.status !== 200) {
    statsErrors.add(1);
    console.error(`origin reset: POST ${url} answered ${res.status} ${res.error || ''}`);
  }
}

// Requests the origin saw for `path` between two snapshots; falls back to all paths when the
// origin stopped tracking paths individually (it keeps at most 10k).
export function pathDelta(before, after, path) {
  if (after.per_path && path in after.per_path) {
    return after.per_path[path] - ((before.per_path && before.per_path[path]) || 0);
  }
  return after.requests - before.requests;
}

export function pathOf(target) {
  return target.split('?')[0];
}

export function queryParam(target, name) {
  const query = target.split('?')[1] || '';
  for (const pair of query.split('&')) {
    const [k, v = ''] = pair.split('=');
    if (k === name) return decodeURIComponent(v.replace(/\+/g, ' '));
  }
  return undefined;
}

// "200ms", "1.5s", "2m" or a bare number of milliseconds -> seconds.
export function seconds(text) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(text).trim());
  if (!m) throw new Error(`cannot parse duration ${text}`);
  const n = parseFloat(m[1]);
  return m[2] === 's' ? n : m[2] === 'm' ? n * 60 : n / 1000;
}

export function maxAgeOf(target) {
  // MAX_AGE overrides, in seconds like max-age itself ("1", "1.5") or with a unit ("500ms").
  const env = __ENV.MAX_AGE;
  if (env) return /^\d+(\.\d+)?$/.test(env) ? parseFloat(env) : seconds(env);
  const m = /(?:^|[,\s])max-age=(\d+)/.exec(queryParam(target, 'cc') || '');
  return m ? parseInt(m[1], 10) : undefined;
}

// The hot-key scenario: every VU requests one key in a closed loop while it expires every
// max-age seconds. The origin should see about one request per expiry, one at a time.
export function hotKey({ title, urls, defaultVus }) {
  const hotPath = __ENV.HOT_PATH || '/hot?cc=max-age%3D1&delay=200ms';
  const originPath = pathOf(hotPath);
  const maxAge = maxAgeOf(hotPath);
  const maxInFlight = intEnv('MAX_IN_FLIGHT', 1);
  const gauges = {
    requests: new Gauge('origin_requests'),
    expiries: new Gauge('expiries'),
    perExpiry: new Gauge('origin_requests_per_expiry'),
    maxInFlight: new Gauge('origin_max_in_flight_hot'),
  };

  const options = {
    scenarios: {
      [title]: {
        executor: 'constant-vus',
        vus: intEnv('VUS', defaultVus),
        duration: DURATION,
        gracefulStop: '10s',
      },
    },
    thresholds: Object.assign(
      { http_req_failed: ['rate==0'] },
      originThresholds({ origin_max_in_flight_hot: [`value<=${maxInFlight}`] }),
    ),
    summaryTrendStats: TREND_STATS,
    discardResponseBodies: true,
  };

  function setup() {
    resetOrigin();
    return { before: originStats(), t0: Date.now() };
  }

  function run() {
    // Round robin over the fleet by global iteration number, so every instance gets an equal
    // share whatever the VU count.
    const url = urls[exec.scenario.iterationInTest % urls.length];
    const res = http.get(url + hotPath, { tags: { name: 'hot' } });
    latency.add(res.timings.duration);
    staleServed.add(isStale(res) ? 1 : 0);
  }

  function teardown(data) {
    const elapsed = (Date.now() - data.t0) / 1000;
    runSeconds.add(elapsed);
    const after = originStats();
    if (!data.before || !after) return;
    const requests = pathDelta(data.before, after, originPath);
    gauges.requests.add(requests);
    // When the path is not tracked, the origin-wide maximum is an upper bound for it.
    const perPath = after.max_in_flight_per_path || {};
    gauges.maxInFlight.add(originPath in perPath ? perPath[originPath] : after.max_in_flight);
    if (maxAge) {
      const expiries = elapsed / maxAge;
      gauges.expiries.add(expiries);
      gauges.perExpiry.add(requests / expiries);
    }
  }

  const handleSummary = report(`${title}: ${urls.join(', ')} ${hotPath}`, (data) => [
    ['origin requests during run', fmt(value(data, 'origin_requests'), 0) + ` (path ${originPath})`],
    ['expiries elapsed', maxAge ? `${fmt(value(data, 'expiries'), 1)} (max-age ${maxAge}s)` : 'n/a (no max-age in cc; set MAX_AGE)'],
    ['origin requests per expiry', fmt(value(data, 'origin_requests_per_expiry'), 2) + ' (ideal ~1)'],
    ['origin max in flight (path)', fmt(value(data, 'origin_max_in_flight_hot'), 0) + ` (limit ${maxInFlight})`],
  ]);

  return { options, setup, run, teardown, handleSummary };
}

export function value(data, metric, stat = 'value') {
  const m = data.metrics[metric];
  return m && m.values ? m.values[stat] : undefined;
}

export function fmt(v, digits = 1) {
  return v === undefined || v === null || Number.isNaN(v) ? 'n/a' : Number(v).toFixed(digits);
}

// Builds handleSummary: common client figures, then `rows(data)` ([label, text] pairs). Writes
// the full k6 summary as JSON to $SUMMARY_JSON when set.
export function report(title, rows) {
  return function handleSummary(data) {
    const secs = value(data, 'run_seconds') || data.state.testRunDurationMs / 1000;
    const count = value(data, 'client_latency', 'count') || 0;
    const failed = data.metrics.http_req_failed ? data.metrics.http_req_failed.values : undefined;
    const ms = (stat) => fmt(value(data, 'client_latency', stat), 1);
    const lines = [
      ['client requests', `${count} (${fmt(count / secs, 0)}/s over ${fmt(secs, 1)}s)`],
      ['client latency ms', `p50 ${ms('med')}  p95 ${ms('p(95)')}  p99 ${ms('p(99)')}  max ${ms('max')}`],
      ['errors', failed ? `${failed.passes} (${fmt(failed.rate * 100, 2)}% of all requests)` : '0'],
    ].concat(rows(data));
    const broken = Object.entries(data.metrics)
      .flatMap(([name, m]) => Object.entries(m.thresholds || {}).filter(([, t]) => !t.ok).map(([expr]) => `${name} ${expr}`));
    lines.push(['thresholds', broken.length ? `FAILED: ${broken.join('; ')}` : 'all passed']);

    const width = Math.max(...lines.map(([label]) => label.length));
    const text = [`\n== ${title}`]
      .concat(lines.map(([label, v]) => `  ${label.padEnd(width)}  ${v}`))
      .join('\n') + '\n\n';
    const out = { stdout: text };
    if (__ENV.SUMMARY_JSON) out[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
    return out;
  };
}
