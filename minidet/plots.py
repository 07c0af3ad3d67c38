"""Pictures of a run, as PNG files (matplotlib, without a display): the loss curves of one run or of
several from their logs, and the precision-recall curves of an evaluation (minidet.evaluate's output)."""
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


def plot_runs(run_dirs, png_path, smooth=20):
    """The loss, RoI accuracy and learning rate of one or several runs (OUT/log.jsonl each), one
    colour per run on shared axes, as one PNG; for comparing runs. Returns png_path."""
    import os

    from minidet.runlog import LOG_NAME

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run_dir in run_dirs:
        records = read_log(os.path.join(run_dir, LOG_NAME))
        if not records:
            raise FileNotFoundError(f"{run_dir}: no {LOG_NAME} with records (not a run folder?)")
        it = np.array([r["iteration"] for r in records])
        label = os.path.basename(os.path.normpath(run_dir))
        line, = axes[0].plot(it, running_mean([r["loss"] for r in records], smooth), label=label)
        axes[1].plot(it, running_mean([r["accuracy"] for r in records], smooth), color=line.get_color())
        axes[2].plot(it, [r["lr"] for r in records], color=line.get_color())
    for ax, ylabel in zip(axes, (f"loss (running mean of {smooth})", "RoI classification accuracy", "learning rate")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def main(argv=None):
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="minidet plot", description="Redraw the training curves (loss, accuracy, "
                                     "learning rate) of one or several run folders on one figure.")
    parser.add_argument("runs", nargs="+", help="run folders (each holds a log.jsonl)")
    parser.add_argument("--out", default="runs.png", help="PNG to write (default runs.png)")
    parser.add_argument("--smooth", type=int, default=20, help="running-mean window (default 20)")
    args = parser.parse_args(argv)
    try:
        print(plot_runs(args.runs, args.out, args.smooth))
    except (OSError, ValueError, KeyError) as err:
        print(f"minidet plot: {err}", file=sys.stderr)
        return 2
    return 0
