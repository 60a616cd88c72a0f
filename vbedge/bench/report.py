"""Rendering bench reports: terminal tables, the ratios of two reports, a PNG."""

from __future__ import annotations

from ..errors import FormatError, MissingDependencyError

_STAGE_ORDER = ("decode", "preprocess", "s3d", "tokenize", "videobert", "end_to_end", "compute")


def _ms(value):
    return "-" if value is None else (f"{value:.1f}" if value >= 10 else f"{value:.2f}")


def _num(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header, rows):
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _run_label(run):
    label = f"{run['backend']} {run['precision']}"
    if "streams" in run:
        label += f" x{run['streams']}"
    if "model" in run:
        label += f" {run['model']} b{run['batch']}"
    return label


def format_report(report):
    """A readable multi-line table of a :func:`~vbedge.bench.runner.run_bench` (or model) report."""
    machine = report.get("machine", {})
    lines = [f"machine: {machine.get('cpu_model')}, {machine.get('usable_cores')} usable of "
             f"{machine.get('logical_cores')} logical cores"]
    gpus = machine.get("gpus") or []
    lines.append("GPU: " + (", ".join(f"{g['name']} (driver {g['driver']})" for g in gpus)
                            if gpus else "none"))
    versions = machine.get("versions", {})
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if machine.get("jetson"):
        j = machine["jetson"]
        mode = j["nvpmodel"]["name"] if j.get("nvpmodel") else "unknown"
        lines.append(f"Jetson: {j['model']}, nvpmodel {mode}, full clocks: {j['full_clocks']}")
    for run in report.get("runs", []):
        lines.append("")
        if "streams" in run:
            lines.append(
                f"{_run_label(run)}: {run['clips']} clips in {run['measured_seconds']:.1f} s, "
                f"{_num(run['clips_per_s'])} clips/s, rtf {_num(run['rtf'], 3)}, dropped "
                f"{run['dropped_clips']}, real time: {'yes' if run['realtime'] else 'no'}, CPU "
                f"{_num((run['cpu_utilization'] or 0) * 100, 0)}% of {run['cores']} cores, peak "
                f"RSS {_num(run['peak_rss_mb'], 0)} MB, mean S3D batch "
                f"{_num((run.get('batch_mean') or {}).get('s3d'))}")
        else:
            lines.append(f"{_run_label(run)}: {_num(run['calls_per_s'])} calls/s, peak RSS "
                         f"{_num(run['peak_rss_mb'], 0)} MB, {run['split']}")
        rows = []
        for name in _STAGE_ORDER:
            stats = run["stages"].get(name)
            if stats is None:
                continue
            rows.append([name, stats["count"]] + [_ms(stats[k]) for k in (
                "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")])
        for name, stats in (run.get("queue_wait") or {}).items():
            rows.append([f"wait>{name}", stats["count"]] + [_ms(stats[k]) for k in (
                "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")])
        lines += ["  " + l for l in _table(
            ["stage (ms)", "n", "min", "mean", "p50", "p90", "p95", "p99", "max"], rows)]
        if run.get("gpu"):
            for g in run["gpu"]:
                lines.append(f"  GPU {g['index']}: peak {g['peak_memory_used_mb']:.0f} MB, mean "
                             f"utilisation {g['mean_utilization_pct']:.0f}%")
    for sweep in report.get("sweeps", []):
        lines.append(f"{sweep['backend']} {sweep['precision']}: largest number of live streams "
                     f"held in real time: {sweep['max_realtime_streams']} (tried "
                     f"{sweep['streams_tried']})")
    for skipped in report.get("skipped", []):
        lines.append(f"skipped {skipped['backend']} {skipped['precision']}: {skipped['reason']}")
    for warning in report.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def _ratio(a, b):
    if a is None or b is None or a == 0:
        return None
    return b / a


def _key(run):
    return (run.get("backend"), run.get("precision"), run.get("streams"), run.get("model"),
            run.get("batch"))


def compare_reports(a, b):
    """Ratios ``b / a`` for the configurations two reports share.

    Runs are matched by backend, precision, stream count (and model and batch for model
    reports). For each: ``stages`` (name -> ``{"p50": ratio, "p99": ratio}``), and
    ``clips_per_s`` (or ``calls_per_s``), ``rtf``, ``peak_rss_mb`` and ``dropped_clips`` as
    ratios; a ratio is ``None`` where ``a``'s value is 0 or missing. Returns ``{"rows": [...],
    "only_in_a": [...], "only_in_b": [...]}`` (labels of unmatched runs).

    Raises:
        FormatError: a report without a ``runs`` list.
    """
    for name, report in (("first", a), ("second", b)):
        if not isinstance(report, dict) or not isinstance(report.get("runs"), list):
            raise FormatError(f"the {name} report has no 'runs' list: is it a vbedge bench JSON?")
    runs_b = {_key(r): r for r in b["runs"]}
    rows, matched = [], set()
    for run_a in a["runs"]:
        run_b = runs_b.get(_key(run_a))
        if run_b is None:
            continue
        matched.add(_key(run_a))
        stages = {}
        for name, stats_a in run_a.get("stages", {}).items():
            stats_b = run_b.get("stages", {}).get(name)
            if stats_b is not None:
                stages[name] = {q: _ratio(stats_a.get(f"{q}_ms"), stats_b.get(f"{q}_ms"))
                                for q in ("p50", "p99")}
        row = {"label": _run_label(run_a), "stages": stages}
        for field in ("clips_per_s", "calls_per_s", "rtf", "peak_rss_mb", "dropped_clips"):
            if field in run_a or field in run_b:
                row[field] = _ratio(run_a.get(field), run_b.get(field))
        rows.append(row)
    return {"rows": rows,
            "only_in_a": [_run_label(r) for r in a["runs"] if _key(r) not in matched],
            "only_in_b": [_run_label(r) for r in b["runs"] if _key(r) not in matched]}


def format_comparison(comparison, name_a="a", name_b="b"):
    """Table of :func:`compare_reports`'s ratios (``b / a``: below 1 means ``b`` is lower)."""
    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [f"ratios {name_b} / {name_a} (below 1: {name_b} is lower, i.e. faster for times)"]
    for row in comparison["rows"]:
        lines.append("")
        extras = [f"{k} {fmt(row[k])}" for k in ("clips_per_s", "calls_per_s", "rtf",
                                                  "peak_rss_mb", "dropped_clips") if k in row]
        lines.append(f"{row['label']}: " + ", ".join(extras))
        body = [[name, fmt(r["p50"]), fmt(r["p99"])] for name, r in row["stages"].items()]
        lines += ["  " + l for l in _table(["stage", "p50", "p99"], body)]
    for side, name in (("only_in_a", name_a), ("only_in_b", name_b)):
        if comparison[side]:
            lines.append(f"only in {name}: {', '.join(comparison[side])}")
    return "\n".join(lines)


def plot_report(report, path):
    """Write a PNG: per-stage p50/p90/p99 bars per run and, for a sweep, clips/s per stream count.

    Raises:
        MissingDependencyError: matplotlib is not installed (``pip install 'vbedge[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install 'vbedge[plot]'") from None
    runs = report.get("runs", [])
    sweep = [r for r in runs if "streams" in r]
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(13 if sweep else 8, 4.5),
                             squeeze=False)
    ax = axes[0][0]
    stages = [s for s in _STAGE_ORDER if any(s in r["stages"] for r in runs)]
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        xs = [k + i * width for k in range(len(stages))]
        p50 = [run["stages"].get(s, {}).get("p50_ms") or 0 for s in stages]
        p99 = [run["stages"].get(s, {}).get("p99_ms") or 0 for s in stages]
        ax.bar(xs, p99, width, alpha=0.35, color=f"C{i}")
        ax.bar(xs, p50, width, label=_run_label(run), color=f"C{i}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(stages))], stages)
    ax.set_ylabel("ms (solid p50, light p99)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("per-stage latency")
    if sweep:
        ax = axes[0][1]
        groups = {}
        for run in sweep:
            groups.setdefault((run["backend"], run["precision"]), []).append(run)
        for (backend, precision), group in groups.items():
            group.sort(key=lambda r: r["streams"])
            ax.plot([r["streams"] for r in group],
                    [(r["stages"]["end_to_end"]["p99_ms"] or 0) for r in group],
                    marker="o", label=f"{backend} {precision} p99 end to end")
        ax.set_xticks(sorted({r["streams"] for r in sweep}))
        clip_ms = sweep[0]["clip_seconds"] * 1000.0
        ax.axhline(clip_ms, color="k", linestyle="--", label="one clip (real-time limit)")
        ax.set_xlabel("live streams")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
        ax.set_title("stream sweep")
    fig.suptitle(f"vbedge bench: {report.get('machine', {}).get('cpu_model')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
