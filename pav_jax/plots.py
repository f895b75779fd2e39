"""Matplotlib helpers shared by the run report and the search report."""

from pathlib import Path


def pyplot():
  """matplotlib.pyplot on the Agg backend (imported lazily: ~1 s)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_axes(plt, fig, ax, path: Path, xlabel: str, ylabel: str,
              title: str) -> None:
  """Labels, grid and legend on `ax`, then writes `fig` to `path`."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
