"""The server side of rynn-edge: the Triton Inference Server (models, environment, process) and LeRobot's
async-inference gRPC endpoint. The robot side of a remote model is `backends/triton.py`."""
