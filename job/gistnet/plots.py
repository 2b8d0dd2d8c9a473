"""Figure helpers shared by every layer that draws (evidence plots, augmentation examples)."""

from __future__ import annotations


def save_plot(fig, ax, path, title: str, xlabel: str, ylabel: str, legend_at: str) -> None:
    """Label a one-axes figure, write it as a PNG and free it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc=legend_at)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_figure(fig, path) -> None:
    """Write a finished figure as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
