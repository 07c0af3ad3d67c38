"""Softmax over the classes of each row, written once for the loss, the model's scores and the studies.

    log p_ic = (s_ic - m_i) - log sum_c exp(s_ic - m_i),   m_i = max_c s_ic
    p_ic     = exp(log p_ic)

Subtracting the row's maximum keeps every exp <= 1, so no score overflows at any scale; taking the
log before the exp keeps log p finite where p itself underflows to 0. Shapes: (R, C) -> (R, C).
"""
from minidet.backend import get_array_module


def log_softmax(scores):
    xp = get_array_module(scores)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(scores):
    return get_array_module(scores).exp(log_softmax(scores))
