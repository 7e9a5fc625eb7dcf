"""rynn-edge export: checkpoint -> ONNX graphs / TensorRT engines + manifest."""
