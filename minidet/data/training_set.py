"""The training split as a run reads it: its images, and their proposals from the cache, from a file,
or from the selective-search mode that "auto" chooses by measuring recall on a sample of the split."""
from minidet.data.open import data_home, open_dataset
from minidet.data.proposals import proposals_cache_dir
from minidet.distributed import load_proposals_sharded

FALLBACK_MODE = "fast"   # recorded for a model trained on given proposals, where "auto" had nothing to measure


def load_training_data(config, dataset, proposals, comm, log):
    """(dataset, proposals, proposal mode) of the training split: read, and computed (cached, shared out
    between ranks) unless given; proposals from config.proposals_file when it names one. The mode is the
    one a model records for detection: "auto" resolved by measuring recall on a sample of the split
    (minidet.data.recall.choose_mode, on rank 0), else config.proposal_mode."""
    if dataset is None:
        dataset = open_dataset(config.data_dir, config.split, config.class_names, config.coco_json, config.images)
    mode = config.proposal_mode
    if proposals is None and config.proposals_file:
        from minidet.data.external_proposals import load_external_proposals

        proposals = load_external_proposals(config.proposals_file, dataset, config.proposals_layout)
        log(f"proposals for {len(dataset)} images of {config.split} from {config.proposals_file} "
            f"({sum(map(len, proposals)) / max(1, len(proposals)):.0f} boxes per image)")
    elif proposals is None:
        cache = proposals_cache_dir(data_home(config.data_dir, config.coco_json), config.out, config.proposals_dir)
        if mode == "auto":
            mode = comm.bcast_obj(choose_proposal_mode(dataset, cache, config, log) if comm.is_root else None)
        log(f"proposals for {len(dataset)} images of {config.split} ({mode} selective search, cached in {cache})")
        proposals = load_proposals_sharded(comm, dataset, cache, workers=config.proposal_workers,
                                           mode=mode, progress=config.progress)
    if mode == "auto":          # proposals given or from a file: nothing measured, and detection without
        mode = FALLBACK_MODE    # a proposals file computes these
    return dataset, proposals, mode


def choose_proposal_mode(dataset, cache, config, log):
    """The selective-search mode "auto" stands for on this data set, with the measurement behind it."""
    from minidet.data.recall import AUTO_SAMPLE, choose_mode

    log(f"proposal mode auto: measuring recall of each candidate mode on {AUTO_SAMPLE} training images")
    mode, results = choose_mode(dataset, cache, workers=config.proposal_workers, progress=config.progress)
    for candidate, result in results.items():
        recalls = ", ".join(f"{name} {row['2000']:.3f}" for name, row in result["recall"]["0.5"].items()
                            if name != "all")
        log(f"  {candidate}: {result['boxes_per_image']:.0f} boxes per image; recall at IoU 0.5 within 2000: {recalls}")
    log(f"  chosen: {mode} (docs/PROPOSALS.md)")
    return mode
