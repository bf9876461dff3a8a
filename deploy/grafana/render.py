"""Render each TeleBoost dashboard's panels to one PNG from a live Prometheus (Grafana itself is not a
Debian or PyPI package): the same PromQL as the dashboard JSON, over a time range, with matplotlib.

    python -m deploy.grafana.render --prometheus http://127.0.0.1:9095 --out docs/dashboards [--minutes 30]

Dashboard variables are taken at "All" (`$SessionName`, `$stage` → `.+`) and `$__rate_interval`
is `--rate-interval`; a panel with no data says so in its frame.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

from deploy.grafana.build import DASHBOARDS, dashboard_json

ALL = ".+"


def resolve(expr: str, rate_interval: str = "1m") -> str:
    """A panel's PromQL with the dashboard variables at "All" and Grafana's rate interval fixed."""
    return expr.replace("$__rate_interval", rate_interval).replace("$SessionName", ALL).replace("$stage", ALL)


def legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match.group(1), ""), template).strip()


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.load(response)
    return body["data"]["result"]


def render(prometheus: str, out: Path, start: float, end: float, rate_interval: str = "1m") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    step = max(1.0, (end - start) / 300)
    paths = []
    for dashboard in DASHBOARDS:
        panels = dashboard_json(dashboard)["panels"]
        rows = (len(panels) + 1) // 2
        fig, axes = plt.subplots(rows, 2, figsize=(15, 3.3 * rows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        for ax, panel in zip(axes.flat, panels):
            drawn = 0
            for target in panel["targets"]:
                for series in query_range(prometheus, resolve(target["expr"], rate_interval), start, end, step):
                    points = [(float(t) - start, float(v)) for t, v in series["values"]]
                    ax.plot(*zip(*points), label=legend(target["legendFormat"], series["metric"]) or target["refId"],
                            linewidth=1.2, marker="." if len(points) < 30 else None)
                    drawn += 1
            ax.set_title(panel["title"], fontsize=9.5, loc="left")
            ax.set_xlabel("seconds", fontsize=7)
            ax.set_ylabel(panel["fieldConfig"]["defaults"]["unit"], fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=6, ncol=2 if drawn > 4 else 1, loc="best")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        fig.suptitle(f"{dashboard.title}  (rendered from Prometheus; Grafana layout in deploy/grafana/dashboards)",
                     fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.98))
        path = out / f"{dashboard.uid.replace('-', '_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="e.g. http://127.0.0.1:9095")
    parser.add_argument("--out", default="docs/dashboards")
    parser.add_argument("--minutes", type=float, default=30.0, help="time range ending now")
    parser.add_argument("--rate-interval", default="1m")
    args = parser.parse_args(argv)
    end = time.time()
    for path in render(args.prometheus.rstrip("/"), Path(args.out), end - 60 * args.minutes, end, args.rate_interval):
        print(path)


if __name__ == "__main__":
    main()
