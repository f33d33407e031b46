"""I/O of the ingest service: Kafka (transactional loop, compacted tables), file system."""
