"""cupy.cuda for the stand-in: one device, on which every kernel has finished when its launch returns."""
from . import runtime


class Device:
    def __init__(self, device=0):
        self.id = device

    def synchronize(self):
        """Nothing to wait for: kernels run synchronously on the CPU."""
