"""The driver side: code that runs in the `sar` process (or the driver of a `sar submit` Ray Job,
or a Tune trial function), building and launching Ray Train / Tune runs and preparing their inputs."""
