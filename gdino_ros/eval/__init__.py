"""Evaluation on RefCOCO / RefCOCO+ / RefCOCOg / gRefCOCO: dataset readers and metrics."""
