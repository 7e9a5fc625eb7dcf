"""Backends run the networks (numpy in, numpy out): torch reference, cuda, onnxruntime, tensorrt."""
