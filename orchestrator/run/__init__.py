"""Running a plan: the scheduler, the worker each task runs in, executors, sandboxing, progress."""
