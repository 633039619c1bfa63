"""Dagster objects only: assets, checks, schedules, jobs and resources."""
