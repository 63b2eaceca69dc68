#!/usr/bin/env python3
"""Renders helm/cachegate the way `helm template` does, through helm-python-sdk (Helm's
Go SDK, no helm binary), after `helm lint --strict` and a check of the values against
values.schema.json.

usage: render-chart.py CHART OUT.yaml [VALUES.yaml ...]
"""
import sys

import helm_python as helm
import yaml


def main() -> int:
    chart_dir, out, *values_files = sys.argv[1:]
    values: dict = {}
    for path in values_files:
        with open(path) as f:
            values = merge(values, yaml.safe_load(f) or {})
    lint = helm.lint(chart_dir, values, strict=True, namespace="cachegate")
    # Severity 1 is informational (e.g. "icon is recommended"); 2 and up are findings.
    findings = [m for m in lint["messages"] if m["severity"] >= 2]
    for m in findings:
        print(f"helm lint {values_files}: {m['path']}: {m['error'].strip()}", file=sys.stderr)
    if findings or lint["errors"]:
        return 1
    with helm.Chart.load(chart_dir) as chart:
        try:
            chart.validate_schema(values)
            manifests = chart.render(
                values, name="cachegate", namespace="cachegate", is_install=True
            )
        except helm.HelmError as e:
            print(f"{chart_dir} {values_files}: {e}", file=sys.stderr)
            return 1
    docs = []
    for name in sorted(manifests):
        if name.endswith("NOTES.txt") or not manifests[name].strip():
            continue
        docs.append(f"# Source: {name}\n{manifests[name].strip()}\n")
    with open(out, "w") as f:
        f.write("---\n".join(docs))
    print(f"rendered {len(docs)} manifests for {values_files or ['defaults']} -> {out}")
    return 0


def merge(base: dict, extra: dict) -> dict:
    """Deep merge like helm's -f: maps merge, everything else replaces."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


if __name__ == "__main__":
    sys.exit(main())
