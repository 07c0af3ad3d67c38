"""Pictures of a run: loss curves from its log (and the precision-recall curves of its evaluation)."""
import numpy as np

from minidet.runlog import read_log


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def running_mean(values, window):
    """Mean of the last `window` values at each position (fewer at the start)."""
    x = np.asarray(values, dtype=np.float64)
    k = max(1, min(window, len(x)))
    c = np.cumsum(np.concatenate(([0.0], x)))
    lo = np.maximum(np.arange(1, len(x) + 1) - k, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(x) + 1) - lo)


def plot_losses(log_path, png_path, smooth=20):
    """Loss curves (total, classification, box regression) and accuracy of a training log, as a PNG."""
    records = read_log(log_path)
    if not records:
        return None
    plt = _pyplot()
    it = np.array([r["iteration"] for r in records])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, colour in (("loss", "k"), ("loss_cls", "tab:blue"), ("loss_bbox", "tab:orange")):
        axes[0].plot(it, running_mean([r[key] for r in records], smooth), colour, label=key)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel(f"loss (running mean of {smooth})")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    axes[1].plot(it, running_mean([r["accuracy"] for r in records], smooth), "tab:green")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("RoI classification accuracy")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
