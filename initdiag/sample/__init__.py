"""Bundled MNIST sample: the first 10,000 training images and all 10,000 test images (see README.md)."""
