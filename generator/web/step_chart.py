"""A small bar chart of a session's step times, as inline SVG for the admin."""

import statistics

WIDTH = 480
HEIGHT = 120
AXIS = 16


def step_chart_svg(step_seconds: list[float]) -> str:
    """One bar per step, scaled to the slowest; the title gives the figures."""
    values = [float(v) for v in step_seconds]
    slowest = max(values) or 1.0
    bar = WIDTH / len(values)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{HEIGHT - AXIS - (v / slowest) * (HEIGHT - AXIS):.1f}" '
        f'width="{max(bar - 1, 1):.1f}" height="{(v / slowest) * (HEIGHT - AXIS):.1f}">'
        f"<title>step {i + 1}: {v * 1000:.0f} ms</title></rect>"
        for i, v in enumerate(values)
    )
    summary = (
        f"{len(values)} steps, median {statistics.median(values) * 1000:.0f} ms, "
        f"slowest {slowest * 1000:.0f} ms, total {sum(values):.2f} s"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{summary}" style="fill:#79aec8">{bars}'
        f'<text x="0" y="{HEIGHT - 3}" style="fill:currentColor;font-size:11px">{summary}</text>'
        "</svg>"
    )
