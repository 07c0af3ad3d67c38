"""Measurements of what the network is asked to learn, run on real training batches.

conflicts: which sampled RoIs read exactly the same input under RoI pooling or RoIAlign, and how
often such RoIs carry different labels (the network is then asked for two answers to one input).
"""
