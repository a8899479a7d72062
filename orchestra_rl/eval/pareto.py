"""Accuracy against dollar cost: the Pareto front of a set of policies, and its plot (the paper's Figure-1 view).

A point is on the front when no other point is at least as accurate for at most its cost with one of the two
strictly better. The plot is a PNG (matplotlib, no display needed): every point labelled, the front drawn as a
line, cost per task on a log axis (costs of tools and frontier models differ by orders of magnitude).
"""

from __future__ import annotations

from pathlib import Path


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The labels of the non-dominated points of {label: (cost, accuracy)}, cheapest first."""
    def dominated(c: float, a: float) -> bool:
        return any(c2 <= c and a2 >= a and (c2, a2) != (c, a) for c2, a2 in points.values())

    return sorted((label for label, (c, a) in points.items() if not dominated(c, a)),
                  key=lambda label: points[label])


def plot_pareto(points: dict[str, tuple[float, float]], path: str | Path, title: str,
                highlight: set[str] = frozenset()) -> Path:
    """Write the plot of {label: (cost per task, accuracy)} to `path`; `highlight`ed labels (the trained
    policies) are drawn apart from the rest (baselines, or the other runs)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training node
    import matplotlib.pyplot as plt

    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for label, (cost, accuracy) in points.items():
            ax.scatter([cost], [accuracy], marker="*" if label in highlight else "o",
                       s=140 if label in highlight else 50, color="tab:red" if label in highlight else "tab:blue",
                       zorder=3)
            ax.annotate(label, (cost, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.plot([points[f][0] for f in front], [points[f][1] for f in front], color="gray", linestyle="--",
                drawstyle="steps-post", label="Pareto front", zorder=2)
        if all(cost > 0 for cost, _ in points.values()):
            ax.set_xscale("log")
        ax.set_xlabel("$ per task")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
