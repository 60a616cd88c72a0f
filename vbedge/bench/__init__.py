"""``vbedge bench``: latency reports of the streaming pipeline and of single model calls.

* :func:`run_bench` times every requested backend x precision x stream count in one process
  (so their ratios can be trusted) and returns a JSON-serialisable report;
* :func:`run_model_bench` times one backend call alone (like trtexec);
* :func:`compare_reports` gives the ratios of two reports; :func:`format_report` and
  :func:`format_comparison` render them as tables; :func:`plot_report` draws a PNG
  (matplotlib, the ``vbedge[plot]`` extra);
* :func:`machine_info` records the machine state the figures depend on (Jetson clocks included).

Nothing here imports torch at import time; the pipeline and the backends are imported when a
benchmark runs.
"""

from .machine import jetson_state, machine_info
from .report import compare_reports, format_comparison, format_report, plot_report
from .runner import (BENCH_STAGES, QUEUE_STAGES, check_choices, run_bench, run_model_bench,
                     summarize_events)
from .stats import PERCENTILES, percentile, summarize
from .synthetic import SyntheticLiveFrames

__all__ = [
    "BENCH_STAGES", "PERCENTILES", "QUEUE_STAGES", "SyntheticLiveFrames", "check_choices",
    "compare_reports", "format_comparison", "format_report", "jetson_state", "machine_info",
    "percentile", "plot_report", "run_bench", "run_model_bench", "summarize",
    "summarize_events",
]
