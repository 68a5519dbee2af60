"""Pipeline stages: sources, window assignment, watermarks, partial aggregation."""
