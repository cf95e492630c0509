"""The results of a run: calls, regions, the tables, calibration, the report (no model is loaded here)."""
