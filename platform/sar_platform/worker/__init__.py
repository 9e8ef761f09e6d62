"""The worker side: code executed inside Ray Train workers and Ray tasks (the training loop, what
each job kind trains or scores, batching, evaluation, and the bodies of the driver's Ray tasks)."""
