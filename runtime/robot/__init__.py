"""The SO100 arm: motor table, bus setup sequence, LeRobot calibration files and unit conversion."""
