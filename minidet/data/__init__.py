"""Everything between a folder of images and the model's input."""
