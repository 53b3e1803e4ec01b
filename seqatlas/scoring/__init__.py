"""The scoring stage (``ingest``): plan content-keyed units of windows, score them on workers
(Ray actors or this process) and commit each unit's parts."""
