"""rynn-edge kernels: C extension for the Feetech bus and the real-time loop. Imports nothing of ours."""
