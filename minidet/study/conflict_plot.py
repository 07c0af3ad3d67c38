"""The figure of minidet.study.conflicts: conflict shares against scale, and one conflicting pair."""
import warnings

import numpy as np

from minidet.study.conflicts import ROI_LAYERS


def label_name(label, class_names):
    return "background" if label == 0 else class_names[label - 1]


def _draw_example(ax, result, example):
    from minidet.data.transforms import flip_image
    from minidet.data.open import open_dataset

    with warnings.catch_warnings():  # the study has already reported the annotations' problems
        warnings.simplefilter("ignore")
        dataset = open_dataset(result["data_dir"], result["split"], result["class_names"])
    image = dataset.load_image(dataset.ids.index(example["image_id"]))
    if example["flipped"]:
        image = flip_image(image)
    ax.imshow(image[:, :, ::-1])
    # the feature cells of the example's layer, in the original image's pixels
    cell = 1 / (ROI_LAYERS[example["roi_layer"]][0] * example["image_scale"])
    for x in np.arange(0, image.shape[1], cell):
        ax.axvline(x, color="white", linewidth=0.3, alpha=0.5)
    for y in np.arange(0, image.shape[0], cell):
        ax.axhline(y, color="white", linewidth=0.3, alpha=0.5)
    for (x1, y1, x2, y2), label, colour, style in zip(example["boxes"], example["labels"], ("yellow", "red"),
                                                      ("-", "--")):
        ax.add_patch(_rectangle(x1, y1, x2, y2, colour, style))
        ax.text(x1, y1 - 3 if colour == "yellow" else y2 + 12, label_name(label, result["class_names"]),
                color=colour, fontsize=9, weight="bold")
    ax.set_title(f"RoI {example['roi_op']} on {example['roi_layer']}, scale {example['scale']}: "
                 f"{example['image_id']}{' (flipped)' if example['flipped'] else ''}\n"
                 f"one input, two labels (grid: feature cells)", fontsize=9)
    ax.axis("off")


def _rectangle(x1, y1, x2, y2, colour, style):
    from matplotlib.patches import Rectangle

    return Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=colour,
                     linestyle=style, linewidth=1.5)


def plot_conflicts(result, path):
    """Write the figure of a run_conflict_study result to path (PNG); returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    example = result.get("example")
    panels = 3 if example else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.5))
    settings = sorted({(r["roi_op"], r["roi_layer"]) for r in result["rows"]})
    for ax, key, what in ((axes[0], "conflict", "in conflict: identical input, another label"),
                          (axes[1], "identical", "identical input to another RoI")):
        for k, (op, layer) in enumerate(settings):
            rows = sorted((r for r in result["rows"] if (r["roi_op"], r["roi_layer"]) == (op, layer)),
                          key=lambda r: r["scale"])
            ax.plot([r["scale"] for r in rows], [100 * r[key] for r in rows], "o-", color=f"C{k}",
                    label=f"RoI {op}, {layer}")
        ax.set_xlabel("image scale (shorter side, pixels)")
        ax.set_ylabel("share of sampled RoIs (%)")
        ax.set_title(f"{what}\n{result['images']} images of {result['split']}, each also flipped", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if example:
        _draw_example(axes[2], result, example)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
