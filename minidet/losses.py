"""The Fast R-CNN losses, each returning (loss, gradients).

A loss is a 0-d array of its input's module (numpy or cupy): reading it with float()
is the caller's choice, so the GPU never waits for the host inside a training step.
"""
from minidet.backend import get_array_module
from minidet.ops.softmax import log_softmax


def softmax_log_loss(scores, labels):
    """Mean negative log-likelihood of the labels under the softmax of the scores.

    loss = mean_i (log sum_c exp s_ic - s_i,u_i),   dscores = (softmax(s) - onehot(u)) / R.
    scores (R, C) float, labels u (R,) int in 0..C-1 -> loss (), dscores (R, C).
    """
    xp = get_array_module(scores)
    labels = xp.asarray(labels)
    rows = xp.arange(len(labels))
    log_p = log_softmax(scores)
    loss = -xp.mean(log_p[rows, labels])
    dscores = xp.exp(log_p)                  # softmax(s)
    dscores[rows, labels] -= 1
    dscores /= len(labels)
    return xp.asarray(loss), dscores


def smooth_l1_loss(pred, target, weights, normalizer):
    """loss = sum(weights * smoothL1(pred - target)) / normalizer, with
    smoothL1(d) = 0.5 d^2 if |d| < 1 else |d| - 0.5, whose derivative is d if |d| < 1 else sign(d).

    pred, target, weights: same shape, e.g. (R, 4(K+1)) -> loss (), dpred (same shape).
    """
    xp = get_array_module(pred)
    d = pred - target
    abs_d = xp.abs(d)
    loss = xp.sum(weights * xp.where(abs_d < 1, 0.5 * d * d, abs_d - 0.5)) / normalizer
    dpred = weights * xp.clip(d, -1, 1) / normalizer  # clip(d, -1, 1) is d inside, sign(d) outside
    return xp.asarray(loss), dpred


def fast_rcnn_loss(cls_score, bbox_pred, labels, bbox_targets, bbox_weights, details=False):
    """The multi-task loss of Fast R-CNN with lambda = 1, both terms divided by the R RoIs:

    L = mean_i -log softmax(cls_score_i)[u_i] + sum(bbox_weights * smoothL1(bbox_pred - bbox_targets)) / R.

    cls_score (R, K+1), labels (R,) int, bbox_pred / bbox_targets / bbox_weights (R, 4(K+1))
    -> loss (), dcls_score (R, K+1), dbbox_pred (R, 4(K+1)), and with details=True a 4th item
    dict(loss_cls, loss_bbox, accuracy), all 0-d arrays. bbox_weights is 0 outside the 4 columns
    of a RoI's class and on background RoIs, which therefore regress nothing.
    """
    xp = get_array_module(cls_score)
    loss_cls, dcls_score = softmax_log_loss(cls_score, labels)
    loss_bbox, dbbox_pred = smooth_l1_loss(bbox_pred, bbox_targets, bbox_weights, len(cls_score))
    loss = xp.asarray(loss_cls + loss_bbox)
    if not details:
        return loss, dcls_score, dbbox_pred
    accuracy = xp.asarray(xp.mean(cls_score.argmax(axis=1) == xp.asarray(labels)))
    return loss, dcls_score, dbbox_pred, dict(loss_cls=loss_cls, loss_bbox=loss_bbox, accuracy=accuracy)
