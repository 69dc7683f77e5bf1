"""Numbers to strings: thop's ``clever_format`` and the table's count formats."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["clever_format", "format_bytes", "format_count", "format_rate", "format_seconds", "UNITS"]

UNITS = ("human", "exact")

_SCALES = ((10**18, "E"), (10**15, "P"), (10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K"))


def clever_format(nums: float | Iterable[float], format: str = "%.2f") -> str | tuple[str, ...]:
    """thop's ``clever_format``: ``clever_format([macs, params])`` -> ``("4.11G", "25.56M")``."""
    single = not isinstance(nums, Iterable)
    values = [nums] if single else list(nums)
    out = []
    for num in values:
        if num > 1e12:
            out.append(format % (num / 1e12) + "T")
        elif num > 1e9:
            out.append(format % (num / 1e9) + "G")
        elif num > 1e6:
            out.append(format % (num / 1e6) + "M")
        elif num > 1e3:
            out.append(format % (num / 1e3) + "K")
        else:
            out.append(format % num + "B")
    return out[0] if len(out) == 1 else tuple(out)


def format_count(n: int, units: str = "human") -> str:
    """``"exact"``: ``1,234,567``; ``"human"``: ``1.23M`` (K, M, G, T, P, E; plain below 1000)."""
    if units == "exact":
        return f"{n:,}"
    for scale, suffix in _SCALES:
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def format_bytes(n: int, units: str = "human") -> str:
    """``"exact"``: ``24,576``; ``"human"``: binary units, as memory is sold: ``24.00 KiB``, ``1.50 GiB``."""
    if units == "exact":
        return f"{n:,}"
    for power, suffix in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(n) >= 1024**power:
            return f"{n / 1024**power:.2f} {suffix}"
    return f"{n} B"


def format_seconds(seconds: float) -> str:
    """``12.3 ms``, ``456 us``, ``1.20 s``, ``15.2 ns``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if not seconds:
        return "0 s"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e9:.1f} ns"  # a roofline estimate of a small call


def format_rate(per_second: float) -> str:
    """FLOP/s with K, M, G, T, P, E: ``12.30G``."""
    for scale, suffix in _SCALES:
        if per_second >= scale:
            return f"{per_second / scale:.2f}{suffix}"
    return f"{per_second:.0f}"
