"""I/O of the slurm-gateway: slurmrestd, local subprocesses, Kafka readers, log files."""
