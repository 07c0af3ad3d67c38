"""Layers: each keeps what its backward needs and returns the input gradient.

A layer owns `params` (name -> array) and `grads` (the same names);
`forward(x)` returns the output, `backward(dy)` returns dL/dx and fills `grads`.
"""
