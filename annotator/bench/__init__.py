"""`annotator bench`: throughput of the alternatives side by side, as a table and JSON."""
