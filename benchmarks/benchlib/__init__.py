"""The side-by-side benchmark's own code: databases and brokers, processes, scenarios, the report."""
