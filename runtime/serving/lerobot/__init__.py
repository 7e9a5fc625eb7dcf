"""LeRobot's async-inference protocol (`transport/services.proto`, service `AsyncInference`), written from
the published .proto: an unmodified LeRobot `RobotClient` can be driven by a rynn-edge artifact."""
