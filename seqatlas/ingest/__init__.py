"""Reading and validating sequence inputs."""
