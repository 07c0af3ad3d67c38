"""The `minidet` command: one subcommand per tool, each a module's main(argv)."""
import importlib
import sys

# subcommand -> (module, one-line help); each module defines main(argv) with its own --help
COMMANDS = {
    "train": ("minidet.train", "train a Fast R-CNN on a VOC- or COCO-layout folder, or a COCO file"),
    "eval": ("minidet.inference", "evaluate a checkpoint, or a detections file, with the VOC07 mAP and COCO's metrics"),
    "proposals": ("minidet.data.proposals", "compute and cache selective-search proposals for a split"),
    "convert-weights": ("minidet.weights", "convert a torchvision VGG16 .pth (or minidet .npz) to minidet's .npz"),
    "gradcheck": ("minidet.gradcheck", "check every layer's backward against finite differences"),
    "study": ("minidet.study", "measurements of what the network is asked to learn: `minidet study conflicts`"),
    "plot": ("minidet.plots", "redraw the training curves of one or several run folders on one figure"),
    "convert": ("minidet.convert", "convert between a VOC-layout folder and a COCO JSON file (voc2coco, coco2voc)"),
}


def usage():
    lines = ["usage: minidet COMMAND [--help] [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"minidet: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
