"""rynn-edge runtime: everything a robot computer needs."""
