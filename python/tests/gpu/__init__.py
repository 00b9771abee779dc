"""pymooncake's GPU suite (skipped where there is no GPU)."""
