#!/usr/bin/env python3
"""Renders helm/cachegate/dashboards/cachegate.json from real metrics into a PNG.

    python3 loadtests/dashboard.py [--bin target/release/cachegate] [--out docs/img/dashboard.png]

What it does, all on 127.0.0.1 and free ports:

1. starts `cachegate origin` (the dev origin: ETags, 1,500-byte bodies, no Cache-Control,
   so the route's TTLs decide) and the release binary in front of it (memory store, 1 MiB,
   an upstream breaker), with the admin listener for /metrics and /purge;
2. starts Prometheus (Debian's `prometheus` package) scraping /metrics every second;
3. after one purge of each kind on the empty cache (a counter's series must exist before
   its first increase for rate() to see it), drives about 80 s of scripted traffic: hot and cold keys, a bypass route, bursts on cold
   slow keys (collapsed waiters), a churn of unique keys (evictions), a hard purge of a
   route, a soft purge of a prefix (stale serves and refreshes), and a 15 s origin outage
   (stale_if_error, origin errors, the breaker) followed by recovery;
4. evaluates every panel's queries exactly as the JSON has them, with `$job` = cachegate
   and `$__rate_interval` = 5s (Grafana's 4 x the 1 s scrape interval, plus a sample),
   through Prometheus' query_range API, one point per second;
5. draws each panel where its gridPos puts it (matplotlib), shading the outage and
   marking the purges, and writes the PNG.

Needs: python3, matplotlib (pip install matplotlib), prometheus on PATH
(apt-get install prometheus; only the binary is used) and a release build
(cargo build --release --bin cachegate). Bounded: it stops by itself after the run.
"""

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "helm/cachegate/dashboards/cachegate.json")
TOKEN = "dashboard-demo-token"
RATE_INTERVAL = "5s"
DURATION = 80.0
# When things happen, in seconds from the start of traffic.
CHURN = (18.0, 22.0)
PURGE_ROUTE = 28.0
SOFT_PURGE = 36.0
OUTAGE = (45.0, 60.0)
BURST_EVERY = 8.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(host, port, what, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start on {host}:{port}")


class Stack:
    """The processes this script started, stopped in reverse order at exit."""

    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.procs = []
        self.origin = None
        self.oport, self.pport, self.aport, self.prom_port = (free_port() for _ in range(4))

    def spawn(self, name, argv, env=None):
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def start_origin(self):
        self.origin = self.spawn(
            "origin",
            [self.args.bin, "origin", "--listen", f"127.0.0.1:{self.oport}",
             "--cache-control", "none", "--body-size", "1500", "--delay", "5ms"],
        )
        wait_for("127.0.0.1", self.oport, "the origin")

    def stop_origin(self):
        self.origin.send_signal(signal.SIGTERM)
        self.origin.wait(timeout=10)

    def start(self):
        self.start_origin()
        config = os.path.join(self.tmp, "routes.yaml")
        with open(config, "w") as f:
            f.write(f"""\
listen: 127.0.0.1:{self.pport}
admin: {{ listen: 127.0.0.1:{self.aport}, token: {TOKEN} }}
upstreams:
  origin:
    url: "http://127.0.0.1:{self.oport}"
    connect_timeout: 200ms
    timeout: 2s
    breaker: {{ failures: 5, open_for: 3s }}
defaults: {{ ttl: 4s, stale: 6s, stale_if_error: 120s, jitter: 0.2 }}
store: {{ backend: memory, memory: {{ max_size: 1MiB }} }}
shutdown: {{ grace: 0s }}
routes:
  - path: /users/{{id}}
    upstream: origin
  - path: /products/{{id}}
    upstream: origin
    ttl: 10s
  - path: /slow/{{id}}
    upstream: origin
    ttl: 60s
  - path: /search
    upstream: origin
    cache: false
""")
        env = dict(os.environ, RUST_LOG="warn")
        for k in list(env):
            if k.startswith("OTEL_"):
                del env[k]
        self.spawn("cachegate", [self.args.bin, "--config", config], env=env)
        wait_for("127.0.0.1", self.pport, "cachegate")
        prom_yaml = os.path.join(self.tmp, "prometheus.yml")
        with open(prom_yaml, "w") as f:
            f.write(f"""\
global: {{ scrape_interval: 1s, scrape_timeout: 900ms }}
scrape_configs:
  - job_name: cachegate
    static_configs:
      - targets: ["127.0.0.1:{self.aport}"]
        labels: {{ pod: cachegate-0 }}
""")
        self.spawn("prometheus", [
            self.args.prometheus, f"--config.file={prom_yaml}",
            f"--storage.tsdb.path={os.path.join(self.tmp, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}",
        ])
        wait_for("127.0.0.1", self.prom_port, "prometheus")

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


# === traffic ===


class Client:
    """One keep-alive connection to the proxy."""

    def __init__(self, port):
        self.port = port
        self.conn = None
        self.counts = {}

    def get(self, path):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                r.read()
                self.counts[r.status] = self.counts.get(r.status, 0) + 1
                return r.status
            except (OSError, http.client.HTTPException):
                self.conn = None
        return None


def zipf_id(n, s=1.1):
    # Inverse-CDF sampling over 1..n, weights 1/k^s: a few hot keys, a long tail.
    weights = getattr(zipf_id, "cache", {}).get((n, s))
    if weights is None:
        total, cdf = 0.0, []
        for k in range(1, n + 1):
            total += 1 / k**s
            cdf.append(total)
        weights = [c / total for c in cdf]
        zipf_id.cache = getattr(zipf_id, "cache", {})
        zipf_id.cache[(n, s)] = weights
    u = random.random()
    lo, hi = 0, len(weights) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if weights[mid] < u:
            lo = mid + 1
        else:
            hi = mid
    return lo + 1


def worker(stack, start, stop_at, per_second, seed):
    random.seed(seed)
    c = Client(stack.pport)
    interval = 1.0 / per_second
    churn = 0
    next_at = time.time()
    while time.time() < stop_at:
        t = time.time() - start
        r = random.random()
        if CHURN[0] <= t < CHURN[1] and r < 0.6:
            churn += 1
            path = f"/users/{seed * 1_000_000 + churn}"
        elif r < 0.85:
            path = f"/users/{zipf_id(300)}"
        elif r < 0.96:
            path = f"/products/{zipf_id(40)}"
        else:
            path = f"/search?q={random.randint(1, 1000)}"
        c.get(path)
        next_at += interval
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.time()
    return c.counts


def burst(stack, n, key):
    """n requests at once for a cold key whose origin answer takes 300 ms."""
    barrier = threading.Barrier(n)

    def one():
        c = Client(stack.pport)
        barrier.wait()
        c.get(f"/slow/{key}?delay=300ms")

    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def purge(stack, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.aport}/purge",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def drive(stack):
    # One purge of each kind the run makes, before it (nothing is stored yet): a counter's
    # series must exist before its first increase for rate() to see that increase.
    purge(stack, {"routes": ["/products/{id}"]})
    purge(stack, {"prefixes": ["/users/"], "soft": True})
    time.sleep(2)
    start = time.time()
    stop_at = start + DURATION
    workers, results = 6, []

    def run(i):
        results.append(worker(stack, start, stop_at, 30, i + 1))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for th in threads:
        th.start()
    events = sorted(
        [(t, "burst") for t in frange(4.0, DURATION - 2, BURST_EVERY)]
        + [(PURGE_ROUTE, "purge"), (SOFT_PURGE, "soft"), (OUTAGE[0], "down"), (OUTAGE[1], "up")]
    )
    marks = {}
    for at, what in events:
        delay = start + at - time.time()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        if what == "burst":
            burst(stack, 20, f"b{int(at)}")
        elif what == "purge":
            print(f"  {at:4.0f}s purge routes /products/{{id}}:", purge(stack, {"routes": ["/products/{id}"]})["total"])
            marks["hard purge"] = now
        elif what == "soft":
            print(f"  {at:4.0f}s soft purge prefix /users/:", purge(stack, {"prefixes": ["/users/"], "soft": True})["total"])
            marks["soft purge"] = now
        elif what == "down":
            print(f"  {at:4.0f}s origin stopped")
            stack.stop_origin()
            marks["origin down"] = now
        elif what == "up":
            print(f"  {at:4.0f}s origin started again")
            stack.start_origin()
            marks["origin up"] = now
    for th in threads:
        th.join()
    totals = {}
    for counts in results:
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    print("  client statuses:", dict(sorted(totals.items(), key=lambda kv: str(kv[0]))))
    return start, time.time(), marks


def frange(a, b, step):
    x = a
    while x < b:
        yield x
        x += step


# === queries ===


def query_range(stack, expr, start, end):
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"})
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.prom_port}/api/v1/query_range?{q}", timeout=30) as r:
        answer = json.loads(r.read())
    if answer.get("status") != "success":
        sys.exit(f"query failed: {expr}: {answer}")
    return answer["data"]["result"]


def legend(fmt, labels):
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def evaluate(stack, dashboard, start, end):
    panels = []
    for p in dashboard["panels"]:
        series = []
        for t in p.get("targets", []):
            expr = t["expr"].replace("$job", "cachegate").replace("$__rate_interval", RATE_INTERVAL)
            for r in query_range(stack, expr, start, end):
                xs = [float(v[0]) - start for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                series.append((legend(t.get("legendFormat"), r["metric"]), xs, ys))
        panels.append((p, series))
    return panels


# === drawing ===

BG, PANEL, GRIDC, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#fade2a",
          "#8ab8ff", "#ff7383", "#96d98d", "#ffb357", "#ca95e5"]


def unit_formatter(unit):
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _):
        if unit == "percentunit":
            return f"{v * 100:.0f}%"
        if unit == "s":
            if v == 0:
                return "0"
            return f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
        if unit in ("reqps", "ops"):
            suffix = " req/s" if unit == "reqps" else " ops/s"
            return f"{v:.3g}{suffix}" if v else "0"
        if abs(v) >= 1e6:
            return f"{v / 1e6:.3g}M"
        if abs(v) >= 1e3:
            return f"{v / 1e3:.3g}k"
        return f"{v:.3g}"

    return FuncFormatter(fmt)


def draw(panels, marks, start, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p, _ in panels)
    # Each gridPos unit is SUB grid rows: room above a panel for its title and below it
    # for its time axis.
    SUB = 4
    fig = plt.figure(figsize=(22, rows * 0.4), dpi=80, facecolor=BG)
    gs = GridSpec(rows * SUB, 24, figure=fig, left=0.035, right=0.995, top=0.985,
                  bottom=0.01, wspace=1.4, hspace=0.0)
    t_down = marks.get("origin down", start) - start
    t_up = marks.get("origin up", start) - start
    for p, series in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            ax = fig.add_subplot(gs[g["y"] * SUB:(g["y"] + g["h"]) * SUB, :])
            ax.set_axis_off()
            ax.text(0.0, 0.2, p["title"], color=TEXT, fontsize=15, fontweight="bold",
                    transform=ax.transAxes)
            continue
        ax = fig.add_subplot(gs[g["y"] * SUB + 3:(g["y"] + g["h"]) * SUB - 2, g["x"]:g["x"] + g["w"]])
        ax.set_facecolor(PANEL)
        for side in ax.spines.values():
            side.set_color(GRIDC)
        ax.tick_params(colors=MUTED, labelsize=9)
        ax.set_title(p["title"], color=TEXT, fontsize=12, loc="left", pad=6)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not series or all(all(math.isnan(y) for y in ys) for _, _, ys in series):
            ax.set_xticks([])
            ax.set_yticks([])
            why = "No data" + (" (Redis only: in-process tiers are not timed)" if "store_duration" in json.dumps(p) else "")
            ax.text(0.5, 0.5, why, color=MUTED, fontsize=12, ha="center", va="center",
                    transform=ax.transAxes)
            continue
        if p["type"] == "stat":
            name, xs, ys = series[0]
            last = next((y for y in reversed(ys) if not math.isnan(y)), float("nan"))
            ax.fill_between(xs, ys, color="#73bf69", alpha=0.25, linewidth=0)
            ax.plot(xs, ys, color="#73bf69", linewidth=1)
            ax.set_ylim(0, 1.05)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, unit_formatter(unit)(last, None), color="#73bf69", fontsize=40,
                    fontweight="bold", ha="center", va="center", transform=ax.transAxes)
            ax.text(0.5, 0.12, f"{name}, last 5 s", color=MUTED, fontsize=10, ha="center",
                    transform=ax.transAxes)
            continue
        ax.axvspan(t_down, t_up, color="#f2495c", alpha=0.10, linewidth=0)
        for label in ("hard purge", "soft purge"):
            if label in marks:
                ax.axvline(marks[label] - start, color="#5794f2", alpha=0.6, linewidth=1, linestyle="--")
        for i, (name, xs, ys) in enumerate(series):
            ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.4, label=name)
        ax.yaxis.set_major_formatter(unit_formatter(unit))
        ax.grid(color=GRIDC, linewidth=0.6)
        ax.set_xlim(0, max(xs[-1] for _, xs, _ in series if xs))
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.0f}s"))
        leg = ax.legend(loc="upper left", fontsize=8, ncol=3 if len(series) > 4 else 2,
                        frameon=False, labelcolor=TEXT, handlelength=1.2, columnspacing=1.0)
        leg.set_zorder(5)
    fig.text(0.995, 0.995,
             "cachegate dashboard (helm/cachegate/dashboards/cachegate.json), queries evaluated by "
             "Prometheus on 1 s scrapes of a real run (loadtests/dashboard.py). Red: origin down; "
             "dashed: hard purge (/products/{id}), soft purge (/users/).",
             color=MUTED, fontsize=9, ha="right", va="top")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, facecolor=BG)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/cachegate"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/img/dashboard.png"))
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin}: not built (cargo build --release --bin cachegate)")
    if not shutil.which(args.prometheus):
        sys.exit("prometheus not found (apt-get install prometheus; only its binary is used)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib missing (pip install matplotlib)")
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    tmp = tempfile.mkdtemp(prefix="cachegate-dashboard-")
    stack = Stack(args, tmp)
    try:
        stack.start()
        time.sleep(1)  # a scrape before traffic: rates start from zero
        print(f"driving {DURATION:.0f} s of traffic (logs in {tmp})")
        start, end, marks = drive(stack)
        time.sleep(3)  # the last scrapes
        panels = evaluate(stack, dashboard, start - 2, end + 2)
    finally:
        stack.stop()
    draw(panels, marks, start - 2, args.out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
