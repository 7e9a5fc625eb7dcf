"""matplotlib for the PNGs of bench, profile and plot: headless, optional, small files."""

from __future__ import annotations

from pathlib import Path

from rynn_edge.runtime.errors import UserError


def pyplot(alternative: str | None = "pass --no-plot"):
    """matplotlib.pyplot with a headless backend, or a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        other = f" (or {alternative})" if alternative else ""
        raise UserError(f"plots need matplotlib: pip install 'rynn-edge[plot]'{other}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Tight layout, a small PNG (72 dpi: these are committed), figure closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    pyplot().close(fig)
