"""Independent references of the library's formulas, written without detloss (tests and benchmarks)."""
