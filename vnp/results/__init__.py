"""The results of a run: calls, regions, the tables, the report (no model is loaded here)."""
