"""Pictures of a run's numbers, as PNG files (matplotlib, without a display).

plot_pr_curves: the precision-recall curve of every class, from minidet.evaluate's output.
"""
import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(result, class_names, png_path):
    """Precision-recall curves of every class with a defined AP, in one PNG; returns png_path.

    result: eval_detection_voc's dict (precision and recall lists indexed by label, ap, map);
    label k is class_names[k - 1].
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(class_names):
        precision, recall = result["precision"][k + 1], result["recall"][k + 1]
        if precision is None or recall is None or len(recall) == 0:
            continue
        ax.plot(recall, np.nan_to_num(precision), label=f"{name} (AP {100 * result['ap'][k + 1]:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"mAP {100 * result['map']:.1f}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
