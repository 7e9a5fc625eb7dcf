"""Measurement: timing, chunk runners, per-layer profiling, roofline, stage inputs (plain values in)."""
