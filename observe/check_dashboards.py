#!/usr/bin/env python3
"""Runs every panel query of the Grafana dashboards against a live Prometheus.

    check_dashboards.py [--url URL] [--at UNIX_TIME | --window START END | --last DURATION]
                        [DASHBOARD.json ...]

For every panel target (rows and nested rows included): the dashboard's template variables are
substituted (each query variable by every value Prometheus has for it, and by its "All" value;
Grafana's own $__rate_interval, $__interval, $__range by fixed durations), the expression is sent
to /api/v1/query at one instant, and the check fails, naming the panel and the expression, when
Prometheus answers an error or no series at all. A variable left unsubstituted fails too.

The instant: --at, or with --window the last scrape instant in [START, END] at which every scraped
job (gateway, engine, accounts) was up and the engine applied commands, so a check run right after
a short load (whose services have stopped since) still reads the load's data. Default: now.

Before the dashboards, the check is shown a broken dashboard (an expression that does not parse
and a metric that does not exist) and must reject both panels, or it reports itself as broken: a
check that accepts anything would be worse than none.

Python 3 standard library only.
"""

import argparse
import glob
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DASHBOARDS = os.path.join(ROOT, "observe", "grafana", "dashboards", "*.json")
JOBS = ("gateway", "engine", "accounts")

# Grafana's built-in variables, as fixed durations. The scrape interval is 5 s, so Grafana's own
# $__rate_interval would be at least 20 s; 30 s leaves six samples in a window.
BUILTINS = {
    "__rate_interval": "30s",
    "__interval": "5s",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "5000",
}
VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\[\[([A-Za-z_]\w*)\]\]|\$([A-Za-z_]\w*)")
# Panel types that show no query's data.
QUERYLESS = {"text", "news", "dashlist", "alertlist", "annolist", "welcome"}
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_]\w*)\s*\)\s*$")


class Prometheus:
    def __init__(self, url, timeout=10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path, **params):
        """The `data` of a successful answer; raises QueryError with Prometheus's error otherwise."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except ValueError:
                raise QueryError(f"HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(f"{self.url}: {e}") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr, at):
        return self.get("/api/v1/query", query=expr, time=f"{at:.3f}")

    def query_range(self, expr, start, end, step):
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)


class QueryError(Exception):
    pass


class Unreachable(Exception):
    pass


def panels_of(dashboard):
    """Every panel that is not a row, rows' nested panels included, in order."""
    def walk(panels):
        for panel in panels or []:
            if panel.get("type") == "row":
                yield from walk(panel.get("panels"))
            else:
                yield panel
                yield from walk(panel.get("panels"))
    yield from walk(dashboard.get("panels"))


def substitute(expr, values):
    """expr with each variable replaced from `values`; the names left unknown."""
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        unknown.append(name)
        return m.group(0)

    return VARIABLE.sub(repl, expr), unknown


def variable_values(prom, dashboard, at, failures):
    """{name: [values to try]} for the dashboard's variables: every value Prometheus has and the
    "All" value, for query variables; the current value for the others."""
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        values = []
        if var.get("type") == "query":
            m = LABEL_VALUES.match(query or "")
            if not m:
                failures.append((f"variable ${name}", query, "only label_values(metric, label) is understood"))
                out[name] = None
                continue
            metric, label = m.groups()
            expr = f"count by ({label}) ({metric})"
            try:
                result = prom.query(expr, at)["result"]
            except QueryError as e:
                failures.append((f"variable ${name}", expr, str(e)))
                out[name] = None
                continue
            values = sorted({s["metric"][label] for s in result if label in s["metric"]})
            if not values:
                failures.append((f"variable ${name}", expr, "no values"))
                out[name] = None
                continue
            # As Grafana escapes a value for a Prometheus regex (inside a PromQL string).
            values = [re.sub(r"([\\^$*+?.()|\[\]{}])", r"\\\\\1", v) for v in values]
            if var.get("includeAll"):
                values.append(var.get("allValue") or "|".join(values))
        else:
            current = var.get("current", {}).get("value")
            values = [current if isinstance(current, str) else ".*"]
        out[name] = values
    return out


def check_dashboard(prom, path, dashboard, at, quiet=False):
    """A list of (panel, expression, why) failures; prints one line per target unless quiet."""
    failures = []
    variables = variable_values(prom, dashboard, at, failures)
    if not quiet:
        print(f"{os.path.relpath(path)}: {dashboard.get('title', '?')} (uid {dashboard.get('uid')})")
    for panel in panels_of(dashboard):
        if panel.get("type") in QUERYLESS:
            continue
        title = panel.get("title") or f"panel {panel.get('id')}"
        targets = [t for t in panel.get("targets", []) if not t.get("hide")]
        if not targets:
            failures.append((title, "", "no query"))
            continue
        for target in targets:
            expr = target.get("expr")
            ref = f"{title} [{target.get('refId', '?')}]"
            if not expr:
                failures.append((ref, "", "a target without a PromQL expression"))
                continue
            used = [n for n in variables if re.search(rf"\$\{{?{n}\b|\[\[{n}\]\]", expr)]
            unusable = [n for n in used if variables[n] is None]
            if unusable:
                failures.append((ref, expr, f"variable ${unusable[0]} has no values to try"))
                continue
            combos = [dict()]
            for name in used:
                combos = [dict(c, **{name: v}) for c in combos for v in variables[name]]
            counts = []
            for combo in combos:
                concrete, unknown = substitute(expr, {**BUILTINS, **combo})
                if unknown:
                    failures.append((ref, expr, f"unknown template variable(s): {', '.join(sorted(set(unknown)))}"))
                    break
                try:
                    data = prom.query(concrete, at)
                except QueryError as e:
                    failures.append((ref, concrete, str(e)))
                    break
                result = data.get("result")
                n = len(result) if isinstance(result, list) else 1
                if n == 0:
                    failures.append((ref, concrete, "no series"))
                    break
                counts.append(n)
                if data.get("resultType") == "vector":
                    vals = [float(s["value"][1]) for s in result]
                    vals = [v for v in vals if not math.isnan(v)]
                    shown = f", max {max(vals):.4g}" if vals else ", all NaN"
                elif data.get("resultType") == "scalar":
                    shown = f", {float(result[1]):.4g}"
                else:
                    shown = ""
            else:
                if not quiet:
                    # The series count and largest value with the last combination: the "All" value.
                    tried = f" (and each of {len(combos) - 1} other variable values)" if len(combos) > 1 else ""
                    print(f"  ok  {ref}: {counts[-1]} series{shown}{tried}")
    return failures


def pick_instant(prom, start, end):
    """The last instant in [start, end], on the scrape grid, at which every job was up and the
    engine applied commands."""
    jobs = "|".join(JOBS)
    expr = (
        f'count(count by (job) (up{{job=~"{jobs}"}} == 1)) == {len(JOBS)}'
        f" and sum(rate(engine_commands_total[30s])) > 0"
    )
    data = prom.query_range(expr, start, end, "5s")
    points = [float(t) for s in data["result"] for t, _ in s["values"]]
    if not points:
        raise QueryError(
            f"no instant in [{start}, {end}] at which every job ({', '.join(JOBS)}) was up and the "
            f"engine applied commands (query: {expr}); did the load run while Prometheus scraped?"
        )
    return max(points)


def self_test(prom, at):
    """The check must reject a broken expression and a metric that does not exist."""
    broken = {
        "title": "self-test", "uid": "self-test",
        "panels": [
            {"type": "timeseries", "title": "parses", "targets": [{"refId": "A", "expr": "vector(1)"}]},
            {"type": "timeseries", "title": "does not parse",
             "targets": [{"refId": "A", "expr": "sum(rate(engine_commands_total[$__rate_interval])"}]},
            {"type": "timeseries", "title": "no such metric",
             "targets": [{"refId": "A", "expr": "sum(rate(engine_commandz_total[$__rate_interval]))"}]},
        ],
    }
    failed = {f[0].split(" [")[0] for f in check_dashboard(prom, "<self-test>", broken, at, quiet=True)}
    if failed != {"does not parse", "no such metric"}:
        raise SystemExit(
            "dashboards: the check itself is broken: on a dashboard with one good panel, one that "
            f"does not parse and one of a missing metric it rejected {sorted(failed) or 'nothing'}"
        )
    print("self-test: a panel that does not parse and one of a missing metric were both rejected")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dashboards", nargs="*", help=f"dashboard JSON files (default {os.path.relpath(DEFAULT_DASHBOARDS)})")
    ap.add_argument("--url", default=os.environ.get("PROM_URL", "http://127.0.0.1:19090"))
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--at", type=float, help="evaluate at this Unix time")
    when.add_argument("--window", nargs=2, type=float, metavar=("START", "END"),
                      help="evaluate at the last instant in [START, END] with every job up and commands applied")
    when.add_argument("--last", metavar="DURATION",
                      help="the same as --window over the last DURATION (300, 90s, 5m, 1h)")
    ap.add_argument("--no-self-test", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    paths = args.dashboards or sorted(glob.glob(DEFAULT_DASHBOARDS))
    if not paths:
        raise SystemExit(f"dashboards: no dashboard matches {DEFAULT_DASHBOARDS}")
    if args.last:
        m = re.fullmatch(r"(\d+)([smh]?)", args.last)
        if not m:
            raise SystemExit(f"dashboards: --last expects a duration like 300, 90s, 5m or 1h, got {args.last!r}")
        now = time.time()
        args.window = [now - int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)], now]
    prom = Prometheus(args.url)
    try:
        if args.window:
            at = pick_instant(prom, *args.window)
            print(f"evaluating at {time.strftime('%H:%M:%S', time.localtime(at))} ({at:.0f}), "
                  f"the last instant in the window with every job up and commands applied")
        else:
            at = args.at if args.at is not None else time.time()
        if not args.no_self_test:
            self_test(prom, at)
        failures = []
        for path in paths:
            with open(path, encoding="utf-8") as f:
                try:
                    dashboard = json.load(f)
                except ValueError as e:
                    failures.append((os.path.relpath(path), "", f"not JSON: {e}"))
                    continue
            failures += [(f"{os.path.basename(path)}: {p}", e, why)
                         for p, e, why in check_dashboard(prom, path, dashboard, at)]
    except Unreachable as e:
        raise SystemExit(f"dashboards: Prometheus does not answer: {e} (scripts/prometheus up)")
    except QueryError as e:
        raise SystemExit(f"dashboards: {e}")
    if failures:
        print(f"\nFAILED: {len(failures)} panel target(s)", file=sys.stderr)
        for panel, expr, why in failures:
            print(f"  panel {panel!r}: {why}\n    expression: {expr}", file=sys.stderr)
        sys.exit(1)
    print("every panel query returned data")


if __name__ == "__main__":
    main()
