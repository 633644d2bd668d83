"""Process memory readings for the bench scripts (Linux /proc, with a portable fallback for the peak)."""
from __future__ import annotations

import resource


def status_mib(key: str) -> float | None:
    """A field of /proc/self/status in MiB (VmRSS, VmHWM = peak RSS, RssAnon, ...); None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """The process's peak RSS so far (VmHWM; getrusage where /proc is missing)."""
    return status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
