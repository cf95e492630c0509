"""What vnp derives from committed scores: calls, regions, tables, calibration, plots, the report."""
