"""runstream's slurm-gateway: cluster variables as batch jobs (Slurm REST or local)."""

__version__ = "0.1.0"
